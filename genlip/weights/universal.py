"""A training state with no parallel layout: full fp32 weights and Adam moments by single-process name.

    CHECKPOINT/universal/fp32.safetensors, exp_avg.safetensors, exp_avg_sq.safetensors, universal.json

Written once from a DeepSpeed checkpoint of any (tp, pp, dp, ZeRO) layout (genlip.weights.deepspeed_files
reads it offline), read lazily by every rank of a new layout, each taking only the tensors it holds.
`universal.json` records the Adam step count and the layout it came from. This is the role DeepSpeed's
universal checkpoint plays; ours covers pipeline and ZeRO-3 checkpoints as well, in one format.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from genlip.atomic import atomic_write_json, temporary_name
from genlip.model.config import ModelConfig
from genlip.weights.deepspeed_files import CheckpointInfo, read_training_state
from genlip.weights.model_file import save_safetensors

UNIVERSAL_DIR = "universal"
KEYS = ("fp32", "exp_avg", "exp_avg_sq")


def save_universal(info: CheckpointInfo, out: Path | None = None) -> Path:
    """Convert checkpoint `info` into a universal directory (default: inside the checkpoint); returns it."""
    out = Path(out) if out is not None else info.path / UNIVERSAL_DIR
    if (out / "universal.json").is_file():
        return out
    tensors, adam_step = read_training_state(info)
    tmp = temporary_name(out)  # a job's rank 0 and `genlip-ckpt universal` by hand may convert it at once
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed conversion of a process with our host and pid
        tmp.mkdir(parents=True)
        for key in KEYS:
            save_safetensors(tmp / f"{key}.safetensors", {k: v.contiguous() for k, v in tensors[key].items()}, {})
        atomic_write_json(tmp / "universal.json", {"adam_step": adam_step, "layout": info.layout,
                                                   "progress": info.state.get("progress", {}),
                                                   "source": str(info.path)})
        try:
            tmp.replace(out)
        except OSError:
            if not (out / "universal.json").is_file():
                raise
            # another process finished the same conversion first: keep its directory, drop ours
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class Universal:
    """Lazy reader: `get(key, name)` loads one full tensor."""

    def __init__(self, path: Path):
        self.path = Path(path)
        meta = json.loads((self.path / "universal.json").read_text())
        self.adam_step: int = meta["adam_step"]
        self.layout: dict = meta["layout"]
        self._files = {k: safe_open(str(self.path / f"{k}.safetensors"), framework="pt") for k in KEYS}

    def names(self) -> list[str]:
        return list(self._files["fp32"].keys())

    def get(self, key: str, name: str) -> torch.Tensor:
        return self._files[key].get_tensor(name)


def deepspeed_universal_info(cfg: ModelConfig) -> dict:
    """DeepSpeed's `universal_checkpoint_info` for our model, so its `ds_to_universal` merges our TP
    checkpoints right: derived from each parameter's declared split (`tp_plan`). Unsplit parameters are
    replicated; row-parallel weights join on dim 1; fused [q | gate] and [gate | up] blocks (stride 2) are
    two sub-parameters on dim 0; other column / vocabulary splits join on dim 0 (DeepSpeed's default)."""
    from genlip.model.genlip import GenLIP

    with torch.device("meta"):
        params = dict(GenLIP(cfg).named_parameters())
    groups: dict[str, set] = {"tp_replicated_parameter_patterns": set(), "parameter_with_row_parallelism_patterns": set(),
                              "parameter_with_2_sub_params_cat_dim_0": set()}
    for name, p in params.items():
        block = re.fullmatch(r"blocks\.\d+\.(.+)", name)  # one pattern for a parameter of every block
        pattern = (r"^blocks\.\d+\." + re.escape(block[1]) if block else "^" + re.escape(name)) + "$"
        plan = getattr(p, "tp_plan", None)
        if plan is None:
            groups["tp_replicated_parameter_patterns"].add(pattern)
        elif plan == (1, 1):
            groups["parameter_with_row_parallelism_patterns"].add(pattern)
        elif plan == (0, 2):
            groups["parameter_with_2_sub_params_cat_dim_0"].add(pattern)
        elif plan != (0, 1):
            raise ValueError(f"{name}: no DeepSpeed universal pattern for a split {plan}")
    return {"universal_checkpoint_version": 0.4, **{k: sorted(v) for k, v in groups.items()}}

