"""The project's model file: `model.safetensors` (single-process parameter names, fp32) + `model.json`.

`model.json` holds the model config under "model" and whatever provenance the writer adds (progress,
code version, the tokenizer the model was trained with). A copy of that tokenizer sits next to the
weights when known (`tokenizer.model` or `tokenizer.json`), so an export is self-describing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from genlip.atomic import atomic_write_json
from genlip.model.config import ModelConfig


def save_model(path: Path, state: dict[str, torch.Tensor], cfg: ModelConfig, extra: dict | None = None, *,
               tokenizer: Path | None = None) -> Path:
    """Write weights (renamed into place when complete), the config JSON and a tokenizer copy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "genlip"})
    tmp.replace(path)
    meta = {"model": dataclasses.asdict(cfg), **(extra or {})}
    if tokenizer is not None and Path(tokenizer).is_file():
        dst = path.parent / ("tokenizer" + Path(tokenizer).suffix)
        if Path(tokenizer).resolve() != dst.resolve():
            shutil.copyfile(tokenizer, dst)
        meta["tokenizer"] = dst.name
    atomic_write_json(path.with_suffix(".json"), meta)
    return path


def model_config_from_dict(m: dict) -> ModelConfig:
    m = dict(m)
    m["mrope_section"] = tuple(m["mrope_section"])
    return ModelConfig(**m)


def load_model_file(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """(state dict, model config) of a project model file."""
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    return load_file(str(path)), model_config_from_dict(meta["model"])
