"""Build a tensor-parallel GenLIP and move full (single-process) tensors in and out of it."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from genlip.model.config import ModelConfig
from genlip.model.genlip import GenLIP, build_model
from genlip.model.init import unshard_tensors
from megatron_ext import TensorParallelKit, tp_group


def build_tp_model(cfg: ModelConfig, *, seed: int | None = 0, params_dtype=torch.float32) -> GenLIP:
    """GenLIP on megatron-core TP layers over the current TP group (init_parallel must have run)."""
    kit = TensorParallelKit(params_dtype=params_dtype)
    if cfg.vocab_size % kit.tp:
        raise ValueError(f"vocab_size {cfg.vocab_size} is not divisible by tp={kit.tp}; pad the vocabulary")
    return build_model(cfg, kit=kit, seed=seed)


def gather_full(local: torch.Tensor, param: nn.Parameter) -> torch.Tensor:
    """The full tensor of a TP-split parameter (or of its gradient) on every TP rank."""
    if getattr(param, "tp_split", None) is None:
        return local
    group = tp_group()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local.contiguous(), group=group)
    return unshard_tensors(parts, param)


def gather_full_state_dict(model: nn.Module, *, grads: bool = False) -> dict[str, torch.Tensor]:
    """Parameters (or their gradients) of a TP model as one full state dict, on every TP rank."""
    out = {}
    for name, p in model.named_parameters():
        t = p.grad if grads else p.detach()
        if t is None:
            t = torch.zeros_like(p)
        out[name] = gather_full(t, p)
    return out
