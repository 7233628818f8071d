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

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from genlip.model.config import ModelConfig, get_preset
from genlip.model.init import merge_tensors

STATE_FILE = "genlip_state.json"


class CheckpointError(ValueError):
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


def _local_fp32(step: Path, mp: int, tp_rank: int, layout: dict) -> dict[str, torch.Tensor]:
    """Full-over-DP fp32 tensors of model-parallel rank `mp`, with its local (DeepSpeed module) names."""
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
        if "fp32_flat_groups" in sds[0]:
            return unflatten_zero3([sd["fp32_flat_groups"] for sd in sds], shapes)
        return unflatten_partitioned([sd["single_partition_of_fp32_groups"] for sd in sds], shapes,
                                     sds[0].get("param_alignment_paddings"))
    if layout["pp"] == 1:
        module = _load(model_file)["module"]
    else:
        module = {}
        for f in sorted(step.glob(f"layer_*-model_{tp_rank:02d}-model_states.pt")):
            idx = int(f.name.split("-")[0].removeprefix("layer_"))
            module.update({f"{idx}.{k}": v for k, v in _load(f).items()})
    return {k: v.float() for k, v in module.items() if v is not None and not k.endswith("_extra_state")}


def read_fp32_state(info: CheckpointInfo) -> dict[str, torch.Tensor]:
    """The full fp32 weights of a checkpoint with the single-process names (loads into `GenLIP`)."""
    from genlip.model.genlip import GenLIP

    layout, cfg = info.layout, info.model_config
    tp, pp = layout["tp"], layout["pp"]
    with torch.device("meta"):
        plain = dict(GenLIP(cfg).named_parameters())
    slices: dict[str, list] = {}
    for mp in range(tp * pp):
        for name, t in _local_fp32(info.path, mp, mp % tp, layout).items():
            name = canonical_name(name, cfg.num_layers) if pp > 1 else name
            slices.setdefault(name, [None] * tp)[mp % tp] = t
    missing = sorted(set(plain) - set(slices))
    if missing:
        raise CheckpointError(f"{info.path}: no tensors for {missing[:5]}; the checkpoint is incomplete")
    full = {}
    for name, parts in slices.items():
        if name not in plain:
            raise CheckpointError(f"{info.path}: unexpected parameter {name} for model {cfg}")
        plan = getattr(plain[name], "tp_plan", None)
        if tp > 1 and plan is not None:
            full[name] = merge_tensors(parts, dim=plan[0], stride=plan[1])
        else:
            full[name] = parts[0]
        if tuple(full[name].shape) != tuple(plain[name].shape):
            raise CheckpointError(f"{info.path}: {name} has shape {tuple(full[name].shape)}, the model "
                                  f"{tuple(plain[name].shape)}")
    return full
