"""Consolidate a live (TP x PP x ZeRO) model into one single-process state dict (all ranks take part).

Every rank takes part: TP slices are gathered inside each TP group, pipeline stages send their part
to global rank 0, and ZeRO-3 partitions are gathered with DeepSpeed's GatheredParameters. The names are
the single-process model's (embed.*, blocks.i.*, head.*), so the file loads into `GenLIP` directly.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from genlip.parallel.tensor_parallel import gather_full


def consolidated_state_dict(module, *, name_map=None, zero3: bool = False) -> dict[str, torch.Tensor] | None:
    """The full fp32 state dict on global rank 0 (None elsewhere)."""
    params = list(module.named_parameters())
    ctx = contextlib.nullcontext()
    if zero3:
        import deepspeed

        ctx = deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None)
    with ctx:
        local = {}
        for name, p in params:
            full = gather_full(p.detach().float(), p)
            local[name_map(name) if name_map else name] = full.cpu()
    from megatron_ext.parallel_state import ps

    first_of_replica = ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(local if first_of_replica else None, parts, dst=0)
    if dist.get_rank() != 0:
        return None
    merged = {}
    for part in parts:
        if part:
            merged.update(part)
    return merged
