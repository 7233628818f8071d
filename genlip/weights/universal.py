"""A training state with no parallel layout: full fp32 weights and Adam moments by single-process name.

    CHECKPOINT/universal/fp32.safetensors, exp_avg.safetensors, exp_avg_sq.safetensors, universal.json

Written once from a DeepSpeed checkpoint of any (tp, pp, dp, ZeRO) layout (genlip.weights.deepspeed_files
reads it offline), read lazily by every rank of a new layout, each taking only the tensors it holds.
`universal.json` records the Adam step count and the layout it came from. This is the role DeepSpeed's
universal checkpoint plays; ours covers pipeline and ZeRO-3 checkpoints as well, in one format.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from genlip.atomic import atomic_write_json
from genlip.weights.deepspeed_files import CheckpointInfo, read_training_state

UNIVERSAL_DIR = "universal"
KEYS = ("fp32", "exp_avg", "exp_avg_sq")


def save_universal(info: CheckpointInfo, out: Path | None = None) -> Path:
    """Convert checkpoint `info` into a universal directory (default: inside the checkpoint); returns it."""
    out = Path(out) if out is not None else info.path / UNIVERSAL_DIR
    if (out / "universal.json").is_file():
        return out
    tensors, adam_step = read_training_state(info)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for key in KEYS:
        save_file({k: v.contiguous() for k, v in tensors[key].items()}, str(tmp / f"{key}.safetensors"))
    atomic_write_json(tmp / "universal.json", {"adam_step": adam_step, "layout": info.layout,
                                               "progress": info.state.get("progress", {}), "source": str(info.path)})
    tmp.replace(out)
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
