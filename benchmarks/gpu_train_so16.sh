#!/usr/bin/env bash
# so16 training on this machine's GPUs without the attention phase: benchmarks/gpu_suite.sh does it (synthetic
# shards, genlip-train or the plain fallback, the report against the memory planner).
#   bash benchmarks/gpu_train_so16.sh [STEPS=30] [gpu_suite.sh options...]
set -euo pipefail
STEPS=${1:-30}; shift || true
exec bash "$(dirname "$0")/gpu_suite.sh" --skip-attention --steps "$STEPS" "$@"
