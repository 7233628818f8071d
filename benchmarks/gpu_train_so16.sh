#!/usr/bin/env bash
# GPU check for the trainer: so16 in bf16 on packed 16384-slot stage-1 rows, a few steps on every GPU of
# this machine (the Qwen3-sized 151936-entry LM head, as in the paper); prints samples/s, tokens/s, TFLOP/s per device and MFU (from the trainer's log lines).
#   bash benchmarks/gpu_train_so16.sh [STEPS] [extra genlip-train overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-12}; shift || true
WORK=${WORK:-/tmp/genlip_gpu_so16}
NGPU=$(nvidia-smi -L | wc -l)
python - "$WORK" <<'PY'
import sys
from pathlib import Path
from genlip.data.synthetic import write_webdataset_shards
root = Path(sys.argv[1])
if not (root / "raw").exists():
    write_webdataset_shards(root / "raw", num_samples=8000, samples_per_shard=1000, size=256)
PY
[ -f "$WORK/tok.model" ] || genlip-data tokenizer "$WORK/raw" --out "$WORK/tok.model" --vocab-size 1000 --model-type bpe
genlip-data build "$WORK/raw" --out "$WORK/ds" --tokenizer "$WORK/tok.model" --num-workers 8 --quiet
rm -rf "$WORK/run"
torchrun --nproc_per_node "$NGPU" -m genlip.train.trainer run_scripts/configs/so16_stage1.yaml \
  "data.datasets=[$WORK/ds]" model.vocab_size=151936 data.num_workers=4 "train.output_dir=$WORK/run" "train.max_steps=$STEPS" \
  "train.global_batch_rows=$NGPU" train.log_interval=1 train.save_interval=0 "$@" 2>&1 | grep -E "^(GenLIP|step)"
