"""`load_model(path)`: whatever a user points at -> a single-process GenLIP on one device.

Accepted, in this order of detection: a project model file (`model.safetensors` + `model.json`) or a
directory holding one (an export, a finished run); a directory in the authors' Hugging Face layout
(`config.json` with `model_type: genlip`, genlip.weights.official); a DeepSpeed checkpoint of any layout
(`RUN/checkpoints/stepN`, or a run / checkpoints directory: its newest complete checkpoint; read offline
by genlip.weights.deepspeed_files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from genlip.data.tokenizer import file_sha256
from genlip.model.config import ModelConfig
from genlip.model.genlip import GenLIP
from genlip.weights.deepspeed_files import CheckpointError, find_checkpoint, read_fp32_state
from genlip.weights.model_file import ModelPathError, load_model_file
from genlip.weights.official import is_official_dir, load_official

MODEL_FILE = "model.safetensors"


@dataclass
class LoadedModel:
    model: GenLIP
    config: ModelConfig
    tokenizer: Path | None
    """The tokenizer file the model was trained with, when known."""
    source: str
    """What was loaded (for logs)."""


def _tokenizer_near(model_file: Path) -> Path | None:
    meta_file = model_file.with_suffix(".json")
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if meta.get("tokenizer") and (model_file.parent / meta["tokenizer"]).is_file():
        return model_file.parent / meta["tokenizer"]
    for name in ("tokenizer.model", "tokenizer.json"):
        if (model_file.parent / name).is_file():
            return model_file.parent / name
    return run_tokenizer(model_file.parent)


def run_tokenizer(run_dir: Path) -> Path | None:
    """The tokenizer of a run directory's first training dataset (from its config.yaml), if it exists."""
    cfg_file = Path(run_dir) / "config.yaml"
    if not cfg_file.is_file():
        return None
    datasets = json.loads(cfg_file.read_text()).get("data", {}).get("datasets") or []
    for d in datasets[:1]:
        manifest = Path(d) / "manifest.json"
        if manifest.is_file():
            tok = Path(d) / json.loads(manifest.read_text())["tokenizer"]["file"]
            return tok if tok.is_file() else None
    return None


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig, Path | None, str]:
    """(full state dict with the project's names, model config, tokenizer or None, description).

    Refuses weights holding NaN or Inf (ModelPathError naming the first such tensor): nothing good
    comes of evaluating, exporting or training from them."""
    state, cfg, tokenizer, source = _read_state(Path(path))
    check_finite(state, source)
    return state, cfg, tokenizer, source


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """ModelPathError naming the first tensor that holds NaN or Inf."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ModelPathError(f"{source}: tensor {name} holds {bad} NaN/Inf value(s) of {t.numel()}; these "
                                 "weights are unusable: start from an earlier checkpoint")


def check_same_tokenizer(weights_tokenizer: Path | None, data_tokenizer: Path | None, *, source: str) -> str | None:
    """Refuse weights trained with another tokenizer than `data_tokenizer` (ModelPathError naming both files):
    their token ids would mean other words even when the vocabularies pad to the same size. Returns a
    warning to print when the weights carry no tokenizer record (nothing to compare), else None."""
    if data_tokenizer is None:
        return None
    if weights_tokenizer is None:
        return (f"{source} carries no record of its tokenizer; assuming it was trained with {data_tokenizer} "
                "(if not, its token embeddings mean other words)")
    ours, theirs = file_sha256(data_tokenizer), file_sha256(weights_tokenizer)
    if ours != theirs:
        raise ModelPathError(f"{source}: was trained with tokenizer {weights_tokenizer} (sha256 {theirs[:12]}), this "
                             f"run's data with {data_tokenizer} (sha256 {ours[:12]}); start from weights trained with "
                             f"the data's tokenizer, or rebuild the data with {weights_tokenizer}")
    return None


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig, Path | None, str]:
    if path.is_file() and path.suffix == ".safetensors":
        state, cfg = load_model_file(path)
        if json.loads(path.with_suffix(".json").read_text()).get("trunk_only"):
            raise ModelPathError(f"{path}: holds the vision encoder only (exported with --trunk-only), so it cannot "
                                 "make a full GenLIP; export without --trunk-only to evaluate or continue training")
        return state, cfg, _tokenizer_near(path), str(path)
    if path.is_dir() and (path / MODEL_FILE).is_file() and (path / "model.json").is_file() \
            and not _checkpoint_is_newer(path):
        return _read_state(path / MODEL_FILE)
    if path.is_dir() and is_official_dir(path):
        state, cfg = load_official(path)
        return state, cfg, _tokenizer_near(path / MODEL_FILE), f"{path} (authors' Hugging Face layout)"
    if path.is_dir():
        try:
            info = find_checkpoint(path)
        except CheckpointError as e:
            raise ModelPathError(f"{path}: no model found there: not an export (model.safetensors + model.json), "
                                 f"not the authors' layout (config.json), and {e}") from None
        run_dir = info.path.parent.parent
        return read_fp32_state(info), info.model_config, run_tokenizer(run_dir), f"{info.path} ({_describe(info)})"
    raise ModelPathError(f"{path}: does not exist or is not a model file or directory")


def _checkpoint_is_newer(run_dir: Path) -> bool:
    """A run directory whose newest checkpoint is past its final export (the run went on after it)."""
    if not (run_dir / "checkpoints").is_dir():
        return False
    try:
        info = find_checkpoint(run_dir)
    except CheckpointError:
        return False
    try:
        exported = json.loads((run_dir / "model.json").read_text()).get("progress", {}).get("step", -1)
    except (ValueError, AttributeError):  # an unreadable model.json: the checkpoint is the model
        exported = -1
    return info.state.get("progress", {}).get("step", -1) > exported


def _describe(info) -> str:
    lay, prog = info.layout, info.state.get("progress", {})
    return (f"step {prog.get('step', '?')}, {prog.get('samples', 0):,} samples; written by tp {lay['tp']} x pp "
            f"{lay['pp']} x dp {lay['dp']}, ZeRO-{lay['zero_stage']}")


def load_model(path: str | Path, *, device="cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A plain (single-process) GenLIP in eval mode with the weights at `path`."""
    state, cfg, tok, source = load_state(path)
    model = GenLIP(cfg)
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return LoadedModel(model.to(device=device, dtype=dtype).eval(), cfg, tok, source)
