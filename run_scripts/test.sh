#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite (unit, parallel on gloo, integration, and
# the SLURM tests against a one-machine cluster that the tests start).
set -euo pipefail
cd "$(dirname "$0")/.."
bash run_scripts/install.sh dev
# The SLURM tests need Debian's slurm-wlm and munge (installed here when running as root with apt).
if ! command -v slurmctld >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing slurm-wlm and munge for the SLURM tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
    || echo "could not install slurm-wlm/munge: the SLURM tests will skip (and fail under CI)"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DS_ACCELERATOR=cpu
exec "${PYTHON:-python3}" -m pytest -q tests "$@"
