"""Process groups: torch.distributed first, then megatron-core's model-parallel groups.

Rank order is megatron-core's default `tp-cp-ep-dp-pp` (TP fastest), which is also DeepSpeed's
`PipeModelDataParallelTopology` order.
"""

from __future__ import annotations

import datetime
import logging
import os
import warnings

import torch
import torch.distributed as dist

with warnings.catch_warnings():
    # megatron-core warns at import that apex / Transformer Engine are missing; on CPU that is expected.
    warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")
    from megatron.core import parallel_state as ps

log = logging.getLogger(__name__)


def init_parallel(*, tp: int = 1, pp: int = 1, backend: str | None = None, timeout_minutes: int = 30) -> None:
    """Initialise torch.distributed from the environment (torchrun / srun variables) and megatron's groups."""
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    world = dist.get_world_size()
    if world % (tp * pp):
        raise ValueError(f"world size {world} is not divisible by tp*pp = {tp}*{pp}")
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    log.info("parallel groups: world=%d tp=%d pp=%d dp=%d", world, tp, pp, world // (tp * pp))


def destroy_parallel() -> None:
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def tp_group():
    return ps.get_tensor_model_parallel_group()


def tp_rank() -> int:
    return ps.get_tensor_model_parallel_rank()


def tp_world_size() -> int:
    return ps.get_tensor_model_parallel_world_size()
