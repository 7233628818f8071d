#!/usr/bin/env bash
# Install GenLIP-Train (editable) and everything it needs into the current Python.
# Usage: bash run_scripts/install.sh [EXTRAS]      e.g. EXTRAS=dev (default) or dev,gpu
# Without CUDA (no nvidia-smi), torch 2.13.0 comes from PyTorch's CPU wheel index: PyPI's default
# build is the multi-GB CUDA one. TORCH_INDEX_URL replaces that index (a mirror, or a CUDA index).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${1:-dev}
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip_install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    pip_install "torch==2.13.0"
  else
    pip_install "torch==2.13.0" --index-url "https://download.pytorch.org/whl/cpu"
  fi
fi
pip_install -e ".[${EXTRAS}]"
"$PY" -c "import torch, megatron.core, deepspeed; print(f'genlip-train ready: torch {torch.__version__}, cuda={torch.cuda.is_available()}')" 2>/dev/null
