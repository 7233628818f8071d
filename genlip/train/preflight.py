"""Checks a run can start, before torch, DeepSpeed or any process group: config, datasets, world size.

`genlip-train` runs `check_run` before it imports the training stack, so a mistake is answered in about a
second with one line; `Trainer` runs it again on every rank (the same code, so the two never disagree).
"""

from __future__ import annotations

import os
from pathlib import Path

from genlip.config import Config, ConfigError, padded_vocab, validate
from genlip.data.manifest import check_trainable
from genlip.data.shards import load_manifest
from genlip.model.config import ModelConfig


def world_size_from_env() -> int:
    """The number of processes this launch will have (torchrun/deepspeed: WORLD_SIZE, srun: SLURM_NTASKS)."""
    env = os.environ
    text = env.get("WORLD_SIZE") or (env.get("SLURM_NTASKS") if "SLURM_PROCID" in env else None) or "1"
    try:
        return max(int(text), 1)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={text!r} is not a number; launch with torchrun, deepspeed or srun") from None


def check_run(cfg: Config, *, world_size: int) -> tuple[ModelConfig, list[dict]]:
    """The model config this run trains and the manifests of its datasets; ConfigError/DatasetError otherwise."""
    d, t = cfg.data, cfg.train
    if not d.datasets:
        raise ConfigError("data.datasets is empty: give at least one dataset directory made by genlip-data build")
    manifests = [load_manifest(p) for p in d.datasets]
    for path, m in [*zip(d.datasets, manifests), *((p, load_manifest(p)) for p in d.val_datasets)]:
        check_trainable(path, m)  # samples at all, and tokenizer fields that agree with the tokenizer
    first = manifests[0]["tokenizer"]
    for path, m in zip(d.datasets[1:], manifests[1:]):
        if m["tokenizer"]["sha256"] != first["sha256"]:
            raise ConfigError(f"data.datasets: {path} was built with another tokenizer than {d.datasets[0]}; "
                              "rebuild it with the same tokenizer.model")
    vocab = first["vocab_size"]
    model_cfg = validate(cfg, world_size=world_size, vocab_size=padded_vocab(vocab, d.pad_vocab_to))
    if model_cfg.vocab_size < vocab:
        raise ConfigError(f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's {vocab}")
    if t.init_from and not Path(t.init_from).exists():
        raise ConfigError(f"train.init_from={t.init_from!r} does not exist: give a run directory, a checkpoint, "
                          "an export of genlip-export or an authors'-layout directory")
    out = Path(t.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"train.output_dir={t.output_dir!r} is a file; give a directory")
    return model_cfg, manifests
