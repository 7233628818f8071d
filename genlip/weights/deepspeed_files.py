"""Read one of our DeepSpeed checkpoints offline, under any (tp, pp, dp, ZeRO) layout, with no process group.

A checkpoint directory `RUN/checkpoints/stepN/` holds DeepSpeed's files plus `genlip_state.json` (the
layout, the model shape, progress). Model-parallel rank `mp = pp_stage * tp + tp_rank` (DeepSpeed's
order, the same as megatron's) owns:
- `mp_rank_{mp}_model_states.pt`: `param_shapes` (the local parameters of each optimizer group, in
  flattening order) and, without pipeline or ZeRO-3, the module's weights; with a pipeline the weights
  are in `layer_{idx}-model_{tp_rank}-model_states.pt` instead, named `{idx}.rest`;
- `[bf16_]zero_pp_rank_{dp_rank}_mp_rank_{mp}_optim_states.pt`: the fp32 master weights and Adam
  moments as one flat vector per group. ZeRO-1/2 (and bf16 ZeRO-0) cut the concatenated group into
  contiguous data-parallel partitions (`single_partition_of_fp32_groups`, each parameter followed by
  its alignment padding); ZeRO-3 cuts every parameter into `ceil(numel / dp)` pieces, rank r holding
  piece r of each, back to back over the groups (`fp32_flat_groups`; model states are then
  `zero_pp_rank_{d}_mp_rank_{mp}_model_states.pt`).
Full tensors come from undoing the data-parallel partitioning per model-parallel rank, mapping pipeline
names to single-process ones, then merging tensor-parallel slices with each parameter's declared split
(`tp_plan`, see genlip.model.init). Where no optimizer file exists (fp32 ZeRO-0) the module weights are
the fp32 masters. Same layout of reasoning as DeepSpeed's `zero_to_fp32`, which handles one
model-parallel rank only.
"""

from __future__ import annotations

from genlip.errors import UserError

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from genlip.model.config import ModelConfig, get_preset
from genlip.model.init import merge_tensors

STATE_FILE = "genlip_state.json"


class CheckpointError(UserError):
    """A checkpoint that cannot be read; the message names the file and what to do."""


def canonical_name(name: str, num_layers: int) -> str:
    """'{idx}.rest' of a pipeline parameter -> the single-process name (embed.*, blocks.i.*, head.*)."""
    idx, _, rest = name.partition(".")
    i = int(idx)
    if i == 0:
        return f"embed.{rest}"
    if i <= num_layers:
        return f"blocks.{i - 1}.{rest}"
    return f"head.{rest}"


@dataclass
class CheckpointInfo:
    path: Path
    """The step directory."""
    state: dict
    """genlip_state.json: identity (model, layout, datasets, global batch), progress, config."""

    @property
    def layout(self) -> dict:
        return self.state["identity"]["layout"]

    @property
    def model_config(self) -> ModelConfig:
        m = dict(self.state["identity"]["model"])
        m["mrope_section"] = tuple(m["mrope_section"])
        m["attn_backend"] = "auto"
        m["drop_path"] = _run_drop_path(self.state.get("config", {}))
        return ModelConfig(**m)


def _run_drop_path(config: dict) -> float:
    model = dict(config.get("model", {}))
    try:
        preset = model.pop("preset")
        over = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items()}
        return get_preset(preset, **over).drop_path
    except (KeyError, TypeError, ValueError):
        return 0.0


def is_complete(step_dir: Path) -> bool:
    return (Path(step_dir) / STATE_FILE).is_file()


def find_checkpoint(path: str | Path) -> CheckpointInfo:
    """A step directory, or the newest complete checkpoint of a run or checkpoints directory."""
    p = Path(path)
    if not is_complete(p):
        ckpt_dir = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        complete = sorted(d for d in ckpt_dir.glob("step*") if d.is_dir() and is_complete(d))
        if not complete:
            raise CheckpointError(f"{p}: no complete checkpoint found (a RUN/checkpoints/stepN directory with "
                                  f"{STATE_FILE}); give a run directory, its checkpoints/ or one step directory")
        p = complete[-1]
    try:
        state = json.loads((p / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p / STATE_FILE}: unreadable ({e})") from None
    return CheckpointInfo(p, state)


def _load(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete or was written by another layout")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # noqa: BLE001 - a damaged file can fail in many ways inside torch.load
        raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {e}); it is damaged") from None


def _optim_files(step: Path, mp: int, dp: int) -> list[Path]:
    files = []
    for d in range(dp):
        found = sorted(step.glob(f"*zero_pp_rank_{d}_mp_rank_{mp:02d}_optim_states.pt"))
        if found:
            files.append(found[0])
    return files


def unflatten_partitioned(flats: list[list[torch.Tensor]], shapes: list[dict], paddings=None) -> dict:
    """ZeRO-1/2: per group, the rank partitions concatenated, then each parameter in order (+ padding)."""
    out = {}
    for g, group_shapes in enumerate(shapes):
        full = torch.cat([rank_flats[g] for rank_flats in flats])
        offset = 0
        for k, (name, shape) in enumerate(group_shapes.items()):
            n = math.prod(shape)
            out[name] = full[offset:offset + n].view(*shape).clone()
            offset += n + (paddings[g][k] if paddings else 0)
    return out


def unflatten_zero3(flats: list[list[torch.Tensor]], shapes: list[dict]) -> dict:
    """ZeRO-3: every parameter cut into ceil(numel / dp) pieces; rank r holds piece r of each, in order."""
    per_rank = [torch.cat(rank_flats) for rank_flats in flats]
    out, offset = {}, 0
    for name, shape in ((n, s) for group in shapes for n, s in group.items()):
        n = math.prod(shape)
        piece = math.ceil(n / len(per_rank))
        out[name] = torch.cat([r[offset:offset + piece] for r in per_rank])[:n].view(*shape).clone()
        offset += piece
    return out


OPTIM_KEYS = ("exp_avg", "exp_avg_sq")


def _local_states(step: Path, mp: int, tp_rank: int, layout: dict, *, moments: bool) -> tuple[dict, int | None]:
    """({"fp32": {...}, "exp_avg": {...}, "exp_avg_sq": {...}}, Adam step) of model-parallel rank `mp`: tensors
    whole over data parallelism, with local (DeepSpeed module) names. Moments only when `moments`."""
    dp, zero = layout["dp"], layout["zero_stage"]
    optim = _optim_files(step, mp, dp)
    model_file = step / (f"zero_pp_rank_0_mp_rank_{mp:02d}_model_states.pt" if zero == 3 else
                         f"mp_rank_{mp:02d}_model_states.pt")
    if optim:
        if len(optim) != dp:
            raise CheckpointError(f"{step}: {len(optim)} optimizer files for model-parallel rank {mp}, expected {dp} "
                                  "(one per data-parallel rank); the checkpoint is incomplete")
        shapes = _load(model_file)["param_shapes"]
        sds = [_load(f)["optimizer_state_dict"] for f in optim]
        zero3 = "fp32_flat_groups" in sds[0]
        paddings = sds[0].get("param_alignment_paddings")

        def unflatten(flats):
            return unflatten_zero3(flats, shapes) if zero3 else unflatten_partitioned(flats, shapes, paddings)

        out = {"fp32": unflatten([sd["fp32_flat_groups" if zero3 else "single_partition_of_fp32_groups"]
                                  for sd in sds])}
        adam_step = None
        if moments:
            base = [sd["optimizer_state_dict" if zero3 else "base_optimizer_state"]["state"] for sd in sds]
            for key in OPTIM_KEYS:
                out[key] = unflatten([[st[g][key] for g in sorted(st)] for st in base])
            adam_step = int(next(iter(base[0].values()))["step"])
        return out, adam_step
    # fp32 without ZeRO: the module weights are the masters; torch's AdamW state is in the model file,
    # indexed by position over the groups (matrices first, then vectors: genlip.train.trainer._param_groups).
    model_states = _load(model_file)
    if layout["pp"] == 1:
        module = model_states["module"]
    else:
        module = {}
        for f in sorted(step.glob(f"layer_*-model_{tp_rank:02d}-model_states.pt")):
            idx = int(f.name.split("-")[0].removeprefix("layer_"))
            module.update({f"{idx}.{k}": v for k, v in _load(f).items()})
    module = {k: v.float() for k, v in module.items() if v is not None and not k.endswith("_extra_state")}
    out, adam_step = {"fp32": module}, None
    if moments:
        opt = model_states.get("optimizer") or {}
        names = [n for n, t in module.items() if t.dim() >= 2] + [n for n, t in module.items() if t.dim() < 2]
        state = opt.get("state", {})
        if len(state) != len(names):
            raise CheckpointError(f"{model_file}: optimizer state for {len(state)} of {len(names)} parameters")
        for key in OPTIM_KEYS:
            out[key] = {n: state[i][key].float() for i, n in enumerate(names)}
        adam_step = int(state[0]["step"]) if state else 0
    return out, adam_step


def read_fp32_state(info: CheckpointInfo) -> dict[str, torch.Tensor]:
    """The full fp32 weights of a checkpoint with the single-process names (loads into `GenLIP`)."""
    return read_training_state(info, moments=False)[0]["fp32"]


def read_training_state(info: CheckpointInfo, *, moments: bool = True) -> tuple[dict[str, dict], int | None]:
    """({"fp32" | "exp_avg" | "exp_avg_sq": {single-process name: full tensor}}, Adam step count)."""
    from genlip.model.genlip import GenLIP

    layout, cfg = info.layout, info.model_config
    tp, pp = layout["tp"], layout["pp"]
    with torch.device("meta"):
        plain = dict(GenLIP(cfg).named_parameters())
    slices: dict[str, dict[str, list]] = {}
    steps = set()
    for mp in range(tp * pp):
        local, adam_step = _local_states(info.path, mp, mp % tp, layout, moments=moments)
        steps.add(adam_step)
        for key, tensors in local.items():
            for name, t in tensors.items():
                name = canonical_name(name, cfg.num_layers) if pp > 1 else name
                slices.setdefault(key, {}).setdefault(name, [None] * tp)[mp % tp] = t
    if len(steps) > 1:
        raise CheckpointError(f"{info.path}: model-parallel ranks disagree on the optimizer step ({sorted(steps)})")
    return {key: _merge_tp(info, table, plain, tp) for key, table in slices.items()}, steps.pop()


def _merge_tp(info: CheckpointInfo, slices: dict[str, list], plain: dict, tp: int) -> dict[str, torch.Tensor]:
    missing = sorted(set(plain) - set(slices))
    if missing:
        raise CheckpointError(f"{info.path}: no tensors for {missing[:5]}; the checkpoint is incomplete")
    full = {}
    for name, parts in slices.items():
        if name not in plain:
            raise CheckpointError(f"{info.path}: unexpected parameter {name} for model {info.model_config}")
        plan = getattr(plain[name], "tp_plan", None)
        full[name] = merge_tensors(parts, dim=plan[0], stride=plan[1]) if tp > 1 and plan is not None else parts[0]
        if tuple(full[name].shape) != tuple(plain[name].shape):
            raise CheckpointError(f"{info.path}: {name} has shape {tuple(full[name].shape)}, the model "
                                  f"{tuple(plain[name].shape)}")
    return full
