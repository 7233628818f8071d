"""Checkpoints: DeepSpeed's files plus our client state, made visible only when complete.

    RUN/checkpoints/step000001000/      DeepSpeed model/optimizer shards (ZeRO, pipeline layer files)
    RUN/checkpoints/step000001000/rng_rank00003.pt    every rank's RNG states
    RUN/checkpoints/step000001000/genlip_state.json   step, samples, rows consumed, config, layout, hashes
    RUN/checkpoints/latest              name of the newest complete checkpoint (atomic rename, written last)

A checkpoint interrupted while being written has no `genlip_state.json` and is not named by `latest`,
so it is never resumed from; the next complete save removes it.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from genlip.atomic import atomic_write, atomic_write_json
from genlip.config import ConfigError
from genlip.weights.deepspeed_files import STATE_FILE


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(engine, ckpt_dir: Path, step: int, state: dict, *, keep_last: int) -> str:
    """Collective: every rank calls it. Returns the tag."""
    tag = f"step{step:09d}"
    rank = dist.get_rank()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"genlip": state}, save_latest=False)
    torch.save(rng_state(), ckpt_dir / tag / f"rng_rank{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        atomic_write_json(ckpt_dir / tag / STATE_FILE, state)
        atomic_write(ckpt_dir / "latest", tag)
        _prune(ckpt_dir, keep_last, newest=tag)
    dist.barrier()
    return tag


def _prune(ckpt_dir: Path, keep_last: int, newest: str) -> None:
    tags = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step"))
    complete = [t for t in tags if (ckpt_dir / t / STATE_FILE).is_file()]
    doomed = [t for t in tags if t not in complete and t < newest]  # interrupted saves
    if keep_last > 0:
        doomed += complete[:-keep_last]
    for t in doomed:
        shutil.rmtree(ckpt_dir / t, ignore_errors=True)


def latest_checkpoint(ckpt_dir: Path) -> tuple[str, dict] | None:
    """(tag, state) of the newest complete checkpoint, or None."""
    latest = ckpt_dir / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    state_file = ckpt_dir / tag / STATE_FILE
    if not state_file.is_file():
        raise RuntimeError(f"{latest} names {tag}, which has no {STATE_FILE}; the checkpoint directory was "
                           "modified by hand. Point `latest` at a complete checkpoint.")
    return tag, json.loads(state_file.read_text())


def load_checkpoint(engine, ckpt_dir: Path, tag: str) -> None:
    path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                     load_lr_scheduler_states=False)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    rng_file = ckpt_dir / tag / f"rng_rank{dist.get_rank():05d}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))


def check_resume_compatible(saved: dict, current: dict) -> None:
    """Refuse to resume across a different model, dataset, layout or global batch, saying what differs."""
    problems = []
    if saved["model"] != current["model"]:
        diff = {k: (saved["model"].get(k), v) for k, v in current["model"].items() if saved["model"].get(k) != v}
        problems.append(f"model shape differs (checkpoint vs now): {diff}")
    if saved["datasets"] != current["datasets"]:
        problems.append("training data differs (dataset manifests changed); start a new run directory")
    if saved["layout"] != current["layout"]:
        problems.append(f"parallel layout differs: checkpoint {saved['layout']}, now {current['layout']}; resume "
                        "with the same tp/pp/dp/zero_stage (or export the weights and start a new run)")
    if saved["global_batch_rows"] != current["global_batch_rows"]:
        problems.append(f"train.global_batch_rows differs: checkpoint {saved['global_batch_rows']}, now "
                        f"{current['global_batch_rows']}; the data order is defined per global batch")
    if problems:
        raise ConfigError("cannot resume from this checkpoint:\n  " + "\n  ".join(problems))
