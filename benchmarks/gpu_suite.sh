#!/usr/bin/env bash
# The GPU suite, in one call on one CUDA machine (under 8 minutes on an H200; each phase has its own timeout):
#   0. installs what the image lacks (deepspeed, megatron-core, pydantic, hjson, webdataset) with no network,
#      from a wheelhouse carried in the checkout: build it on a networked machine with
#      `bash ../shared/tools/gpu_wheelhouse.sh .whl` and carry .whl (the run tool: carry=[".whl"]);
#   1. attention: flex (and flash when flash-attn is installed) and sdpa against the dense-mask oracle,
#      forward and backward, then so16 forward+backward speed per backend (benchmarks/gpu_attention_check.py);
#   2. training: synthetic stage-1 shards made on the spot, then so16 for STEPS steps on 16384-slot rows (one
#      row per GPU per step; torchrun when the machine has several GPUs, the plain fallback uses one),
#      bf16 + activation checkpointing, ZeRO-1, the Qwen3-sized 151936-entry head, through genlip-train
#      (benchmarks/gpu_suite.py train: torch's AdamW inside DeepSpeed, no end-of-run checkpoint). When
#      deepspeed or megatron-core cannot be imported, the same model and loader in a plain PyTorch loop;
#   3. report: samples/s, tokens/s, TFLOP/s, MFU against the printed peak, peak memory against the memory
#      planner (genlip/cluster/plan.py), the attention backend; with --sync-debug, the host-device
#      synchronisations per steady-state step (torch.cuda.set_sync_debug_mode("warn"), by source line).
#
#   bash benchmarks/gpu_suite.sh [--steps 30] [--sync-debug] [--skip-attention] [--plain] [--cpu-smoke] [--dry-run]
#     --cpu-smoke  the same Python at tiny sizes on CPU (no GPU needed; DS_ACCELERATOR=cpu)
#     --dry-run    print the commands only
# Environment: WHEELHOUSE (.whl), WORK (/tmp/genlip_gpu_suite), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
STEPS=30 SYNC=0 ATTN=1 PLAIN=0 SMOKE=0 DRY=0
while [ $# -gt 0 ]; do
  case $1 in
    --steps) STEPS=$2; shift ;;
    --sync-debug) SYNC=1 ;;
    --skip-attention) ATTN=0 ;;
    --plain) PLAIN=1 ;;
    --cpu-smoke) SMOKE=1 ;;
    --dry-run) DRY=1 ;;
    *) echo "gpu_suite.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}
WHEELHOUSE=${WHEELHOUSE:-.whl}
WORK=${WORK:-/tmp/genlip_gpu_suite}
SITE=/tmp/genlip_site
status=0

run() {  # run [timeout_s] cmd...: print, then run (or only print with --dry-run); a failure is reported, not fatal
  local limit=$1; shift
  echo "+ $*"
  [ "$DRY" = 1 ] && return 0
  local rc=0
  timeout --signal=TERM --kill-after=20 "$limit" "$@" || rc=$?
  if [ $rc -ne 0 ]; then
    echo "gpu_suite: FAILED (exit $rc$([ $rc = 124 ] && echo ", timed out after ${limit}s")): $*"
    status=1
  fi
  return $rc
}
phase() { echo; echo "== [$(date +%T), ${SECONDS}s] $*"; }

if [ "$SMOKE" = 1 ]; then
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
  PRESET=tiny SEQ=512 ROWS=2 SAMPLES=120 SIZE=64 WORKERS=2 LOADERS=0 DTYPE=fp32 WARMUP=2 LOG=1
  STEPS=$([ "$STEPS" = 30 ] && echo 6 || echo "$STEPS")
  WORK=$WORK/cpu_smoke
else
  unset DS_ACCELERATOR  # DeepSpeed picks CUDA
  NGPU=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true); NGPU=${NGPU:-1}; [ "$NGPU" -ge 1 ] || NGPU=1
  PRESET=so16 SEQ=16384 ROWS=$NGPU SAMPLES=$((2400 * NGPU)) SIZE=256 WORKERS=8 LOADERS=6 DTYPE=bf16 WARMUP=10 LOG=5
fi
NGPU=${NGPU:-1}
LAUNCH=("$PY")  # one rank per GPU: torchrun when there are several
[ "$NGPU" -gt 1 ] && LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NGPU")
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

phase "environment"
if [ "$DRY" = 0 ]; then
  nvidia-smi -L 2>/dev/null || echo "nvidia-smi: none"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda',
torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
  if [ "$SMOKE" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_suite: no CUDA device here; use --cpu-smoke on CPU"; exit 2
  fi
fi

phase "install (offline, from $WHEELHOUSE)"
can_train() { "$PY" -c "import deepspeed, megatron.core, megatron_ext" 2>&1 >/dev/null; }
TRAINER=genlip-train
if [ "$PLAIN" = 1 ]; then
  TRAINER=plain
elif [ "$DRY" = 0 ] && ! err=$(can_train); then
  if ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1; then
    run 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELHOUSE"/*.whl || true
    export PYTHONPATH="$REPO:$SITE${PYTHONPATH#"$REPO"}"
  else
    echo "no wheels in $WHEELHOUSE: build them with bash ../shared/tools/gpu_wheelhouse.sh .whl and carry .whl"
  fi
  if ! err=$(can_train); then
    echo "deepspeed / megatron-core cannot be imported (last lines below): the training phase runs the same model"
    echo "and loader in a plain PyTorch loop (fp32 weights, bf16 autocast, AdamW, clipping, activation checkpointing)"
    echo "$err" | tail -n 3
    TRAINER=plain
  fi
fi
missing=$("$PY" -c "
import importlib.util as u
print(' '.join(m for m in ('PIL', 'yaml', 'numpy', 'sentencepiece', 'webdataset', 'tensorboard') if u.find_spec(m) is None))")
if [ -n "$missing" ]; then
  echo "gpu_suite: missing Python modules: $missing (add their wheels to $WHEELHOUSE); data and training skipped"
  TRAINER=none status=1
fi
echo "training phase: $TRAINER"

if [ "$ATTN" = 1 ]; then
  phase "attention: correctness (forward, backward) and speed"
  if [ "$SMOKE" = 1 ]; then
    run 300 "$PY" benchmarks/gpu_attention_check.py --cpu-smoke || true
  else
    run 170 "$PY" benchmarks/gpu_attention_check.py --preset so16 --seq-len 16384 --iters 3 || true
  fi
fi

if [ "$TRAINER" != none ]; then
  phase "synthetic stage-1 shards ($SAMPLES samples)"
  run 120 "$PY" benchmarks/gpu_suite.py data "$WORK" --samples "$SAMPLES" --size "$SIZE" --workers "$WORKERS" || true
  phase "$PRESET training through $TRAINER: $STEPS steps of $ROWS x $SEQ-slot rows, $DTYPE, activation checkpointing"
  rm -rf "$WORK/run"
  overrides=("data.datasets=[$WORK/ds]" "data.seq_len=$SEQ" "data.num_workers=$LOADERS" "data.check=none"
             "train.output_dir=$WORK/run" "train.max_steps=$STEPS" "train.global_batch_rows=$ROWS"
             "train.micro_batch_rows=1" "train.log_interval=$LOG" "train.save_interval=0" "train.dtype=$DTYPE"
             "train.activation_checkpointing=true" "parallel.zero_stage=1")
  if [ "$SMOKE" = 1 ]; then
    config=run_scripts/configs/tiny.yaml
    overrides+=("data.max_samples_per_row=16")
  else
    config=run_scripts/configs/so16_stage1.yaml
    overrides+=("model.vocab_size=151936")
  fi
  mkdir -p "$WORK"
  if [ "$TRAINER" = plain ]; then
    run 290 "$PY" benchmarks/gpu_suite.py plain "$config" "${overrides[@]}" || true
  else
    export GENLIP_SYNC_DEBUG=$SYNC
    rc=0
    run 290 "${LAUNCH[@]}" benchmarks/gpu_suite.py train "$config" "${overrides[@]}" >"$WORK/train.log" 2>&1 || rc=$?
    # the log lines, the sync counts and our own notes; DeepSpeed's and megatron's notices stay in train.log
    grep -E "^(\+ |gpu_suite|GenLIP|step |sync debug| +[0-9]+  )" "$WORK/train.log" || true
    [ $rc -eq 0 ] || { echo "--- last lines of $WORK/train.log"; tail -n 30 "$WORK/train.log"; }
  fi
  phase "report"
  run 60 "$PY" benchmarks/gpu_suite.py report "$WORK/run" --warmup-steps "$WARMUP" --world "$NGPU" || true
  if [ "$SMOKE" = 1 ] && [ "$TRAINER" = genlip-train ]; then  # exercise the fallback too
    phase "cpu smoke: the plain fallback loop"
    rm -rf "$WORK/run"
    run 300 "$PY" benchmarks/gpu_suite.py plain "$config" "${overrides[@]}" || true
    run 60 "$PY" benchmarks/gpu_suite.py report "$WORK/run" --warmup-steps "$WARMUP" || true
  fi
fi
phase "done (status $status)"
exit $status
