"""The project's model file: `model.safetensors` (single-process parameter names, fp32) + `model.json`.

`model.json` holds the model config under "model" and whatever provenance the writer adds (progress,
code version, the tokenizer the model was trained with). A copy of that tokenizer sits next to the
weights when known (`tokenizer.model` or `tokenizer.json`), so an export is self-describing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from genlip.atomic import atomic_write_json, temporary_name
from genlip.errors import UserError
from genlip.model.config import ModelConfig


class ModelPathError(UserError):
    """The path holds no model this project can read; the message says what was expected."""


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file under a temporary name and rename it into place, with the mode every
    other file gets (safetensors itself creates files 0600, whatever the umask)."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        tmp.replace(path)
    except BaseException:  # disk full, interrupted: the old file stays, no temporary one is left
        tmp.unlink(missing_ok=True)
        raise


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a truncated or damaged file is a ModelPathError naming it."""
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise ModelPathError(f"{path}: not a readable safetensors file ({e}); it is truncated or damaged: "
                             "copy or export it again") from None


def save_model(path: Path, state: dict[str, torch.Tensor], cfg: ModelConfig, extra: dict | None = None, *,
               tokenizer: Path | None = None) -> Path:
    """Write weights (renamed into place when complete), the config JSON and a tokenizer copy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(path, {k: v.contiguous() for k, v in state.items()}, {"format": "genlip"})
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
    """(state dict, model config) of a project model file; ModelPathError names a missing or damaged file."""
    meta_file = Path(path).with_suffix(".json")
    try:
        meta = json.loads(meta_file.read_text())
        cfg = model_config_from_dict(meta["model"])
    except FileNotFoundError:
        raise ModelPathError(f"{meta_file}: missing; a model file needs the model.json written beside it by "
                             "genlip-train or genlip-export") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelPathError(f"{meta_file}: not a model description ({type(e).__name__}: {e}); export the "
                             "model again") from None
    return load_safetensors(path), cfg
