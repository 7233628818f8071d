"""Layout-independent weight initialisation and tensor-parallel slicing.

Every parameter carries its init rule (`genlip_init`) and, when split over tensor-parallel ranks, its
split (`tp_split` = (dim, stride, rank, world)); the plain kit declares the split it would get (`tp_plan`). `init_weights` draws each parameter's *full* tensor
from a generator seeded by (seed, parameter name) and keeps this rank's slice, so a model initialised
with the same seed has the same weights under any TP/PP layout. Init rules follow GENLIP_SPEC
section 4: normal(0, 0.02) for linears, patch conv and embedding; xavier-uniform for attention q/k/v/out
(fans from the full weight); zero biases; LayerNorm 1/0; LayerScale 0.1.

`stride` > 1 marks a fused weight made of `stride` logical blocks along `dim` (q|gate, gate|up); each
block is split over the ranks separately, so rank r holds block-slice r of every block.
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn


def set_init(param: nn.Parameter, rule: str, value: float = 0.0, fan: tuple[int, int] | None = None):
    """Attach an init rule: 'normal' (std=value), 'xavier' (fan=(fan_out, fan_in)), 'const' (value)."""
    param.genlip_init = (rule, value, fan)
    return param


def set_tp_split(param: nn.Parameter, *, dim: int, stride: int, rank: int, world: int):
    param.tp_split = (dim, stride, rank, world)
    return param


def set_tp_plan(param: nn.Parameter, *, dim: int, stride: int = 1):
    """Declare how tensor parallelism splits this (full) parameter: along `dim`, in `stride` blocks.

    The plain kit declares it for every parameter the tensor-parallel kit splits (a test keeps the two
    equal), so offline tools (checkpoint readers, converters) know the split without process groups."""
    param.tp_plan = (dim, stride)
    return param


def full_shape(param: torch.Tensor) -> tuple[int, ...]:
    shape = list(param.shape)
    split = getattr(param, "tp_split", None)
    if split is not None:
        dim, _, _, world = split
        shape[dim] *= world
    return tuple(shape)


def split_tensor(full: torch.Tensor, *, dim: int, stride: int, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s slice of `full`: slice `rank` of each of the `stride` blocks along `dim`."""
    pieces = full.chunk(world * stride, dim=dim)
    return torch.cat([pieces[j * world + rank] for j in range(stride)], dim=dim)


def merge_tensors(locals_: list[torch.Tensor], *, dim: int, stride: int) -> torch.Tensor:
    """Inverse of `split_tensor`: the full tensor from every rank's slice, in rank order."""
    per_rank = [t.chunk(stride, dim=dim) for t in locals_]
    return torch.cat([per_rank[r][j] for j in range(stride) for r in range(len(locals_))], dim=dim)


def shard_tensor(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's slice of `full` for `param` (identity for unsplit parameters)."""
    split = getattr(param, "tp_split", None)
    if split is None:
        return full
    dim, stride, rank, world = split
    return split_tensor(full, dim=dim, stride=stride, rank=rank, world=world)


def unshard_tensors(locals_: list[torch.Tensor], param: torch.Tensor) -> torch.Tensor:
    """Inverse of `shard_tensor`: the full tensor from every rank's slice, in rank order."""
    split = getattr(param, "tp_split", None)
    if split is None:
        return locals_[0]
    return merge_tensors(locals_, dim=split[0], stride=split[1])


def _draw(rule, shape, gen) -> torch.Tensor:
    kind, value, fan = rule
    t = torch.empty(shape, dtype=torch.float32)
    if kind == "normal":
        return t.normal_(0.0, value, generator=gen)
    if kind == "xavier":
        fan_out, fan_in = fan
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return t.uniform_(-bound, bound, generator=gen)
    if kind == "const":
        return t.fill_(value)
    raise ValueError(f"unknown init rule {kind!r}")


@torch.no_grad()
def init_weights(model: nn.Module, seed: int, *, name_map=None) -> None:
    """Initialise every parameter of `model` from (seed, canonical parameter name).

    `name_map(name) -> canonical name` lets a pipeline stage use the single-process model's names.
    """
    for name, param in model.named_parameters():
        rule = getattr(param, "genlip_init", None)
        if rule is None:
            raise RuntimeError(f"parameter {name} has no init rule (set_init was not called for it)")
        canonical = name_map(name) if name_map else name
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(canonical.encode()))
        full = _draw(rule, full_shape(param), gen)
        param.copy_(shard_tensor(full, param))


@torch.no_grad()
def load_full_state_dict(model: nn.Module, full: dict[str, torch.Tensor], *, strict: bool = True) -> None:
    """Copy a single-process (full) state dict into a possibly tensor-parallel `model`."""
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(full))
    unexpected = sorted(set(full) - set(params))
    if strict and (missing or unexpected):
        raise KeyError(f"state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, param in params.items():
        if name not in full:
            continue
        src = full[name]
        if tuple(src.shape) != full_shape(param):
            raise ValueError(f"{name}: checkpoint shape {tuple(src.shape)} != model shape {full_shape(param)}")
        param.copy_(shard_tensor(src, param))
