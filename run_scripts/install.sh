#!/usr/bin/env bash
# Install GenLIP-Train (editable) and everything it needs into the current Python.
# Usage: bash run_scripts/install.sh [EXTRAS]      e.g. EXTRAS=dev (default) or dev,gpu
# Without CUDA, torch is pinned to the CPU build 2.13.0 (never a multi-GB CUDA download); set
# TORCH_INDEX_URL to a CPU wheel index where plain `pip install torch` would fetch the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${1:-dev}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip_install "torch==2.13.0"
  elif [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip_install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
  else
    pip_install "torch==2.13.0"
  fi
fi
pip_install -e ".[${EXTRAS}]"
"$PY" -c "import torch, megatron.core, deepspeed; print(f'genlip-train ready: torch {torch.__version__}, cuda={torch.cuda.is_available()}')" 2>/dev/null
