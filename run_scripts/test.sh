#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite (unit, parallel on gloo, integration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash run_scripts/install.sh dev
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DS_ACCELERATOR=cpu
exec "${PYTHON:-python3}" -m pytest -q tests "$@"
