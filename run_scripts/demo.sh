#!/usr/bin/env bash
# Install, then run the main job on its small embedded default (no network, no downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash run_scripts/install.sh dev
exec genlip-demo "$@"
