# Sourced by every GenLIP job script: threads, NCCL and Python settings. Edit the site-specific lines.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1          # a dead rank fails the job instead of hanging it
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# export NCCL_SOCKET_IFNAME=ib0 NCCL_IB_HCA=mlx5   # site-specific interconnect
if ! command -v nvidia-smi >/dev/null 2>&1; then
  export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}    # CPU-only nodes (tests, smoke runs)
fi
