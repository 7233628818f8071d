"""Checkpoints: DeepSpeed's files plus our client state, used only when complete and intact.

    RUN/checkpoints/step000001000/      DeepSpeed model/optimizer shards (ZeRO, pipeline layer files)
    RUN/checkpoints/step000001000/rng_rank00003.pt    every rank's RNG states
    RUN/checkpoints/step000001000/genlip_state.json   written last: progress, config, layout, hashes, and
                                        `files`: the size and sha256 of every other file of the checkpoint
    RUN/checkpoints/latest              name of the newest complete checkpoint (for people and tools)

Resume does not trust `latest`: it scans the step directories newest first and takes the first that is
complete (has its state file) and intact (every listed file present with its size and sha256; hashing is
shared by the ranks, file i by rank i % world). A damaged newer checkpoint is reported by name and
kept; if a later save needs its name, it is renamed `<tag>.damaged` rather than overwritten. A save that
fails on any rank (disk full, I/O error) removes its partial directory and raises `SaveError` on every
rank; the previous checkpoints are untouched. keep-last pruning runs only after a save is complete, so it
never deletes the newest intact checkpoint.
"""

from __future__ import annotations

import hashlib
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


class SaveError(RuntimeError):
    """A checkpoint could not be written; its partial directory was removed."""


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def file_digest(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _any(flag: bool) -> bool:
    t = torch.tensor([float(flag)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _shared_hashes(step_dir: Path, names: list[str]) -> dict[str, dict]:
    """{name: {size, sha256}} of `names`, each rank hashing its share; the same dict on every rank."""
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = {n: {"size": (step_dir / n).stat().st_size, "sha256": file_digest(step_dir / n)}
            for i, n in enumerate(names) if i % world == rank}
    parts = [None] * world
    dist.all_gather_object(parts, mine)
    return {k: v for part in parts for k, v in part.items()}


def save_checkpoint(engine, ckpt_dir: Path, step: int, state: dict, *, keep_last: int, universal_info=None,
                    fault=None) -> str:
    """Collective: every rank calls it. Returns the tag; raises SaveError (on every rank) if it failed.

    `universal_info` goes into DeepSpeed's files as `universal_checkpoint_info` (for its `ds_to_universal`).
    `fault(rank)` is a test hook called after DeepSpeed's files are written (it raises to simulate a
    full disk on that rank)."""
    tag = f"step{step:09d}"
    rank = dist.get_rank()
    step_dir = ckpt_dir / tag
    if rank == 0 and step_dir.exists():
        _set_aside(step_dir)
    dist.barrier()
    error = None
    try:
        client = {"genlip": state} | ({"universal_checkpoint_info": universal_info} if universal_info else {})
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client, save_latest=False)
    except Exception as e:  # noqa: BLE001 - any failure to write must leave no half checkpoint behind
        error = e
        dist.barrier()  # the barrier DeepSpeed's save ends with, where the other ranks now wait
    if error is None:
        try:
            torch.save(rng_state(), step_dir / f"rng_rank{rank:05d}.pt")
            if fault is not None:
                fault(rank)
        except (OSError, RuntimeError) as e:
            error = e
    if _any(error is not None):
        messages = [None] * dist.get_world_size()
        dist.all_gather_object(messages, None if error is None else f"rank {rank}: {type(error).__name__}: {error}")
        if rank == 0:
            shutil.rmtree(step_dir, ignore_errors=True)
        dist.barrier()
        raise SaveError(f"writing checkpoint {step_dir} failed ({'; '.join(m for m in messages if m)}); the partial "
                        "directory was removed and older checkpoints are untouched")
    names = sorted(p.name for p in step_dir.iterdir() if p.is_file() and p.name != STATE_FILE)
    files = _shared_hashes(step_dir, names)
    if rank == 0:
        atomic_write_json(step_dir / STATE_FILE, {**state, "files": files})
        atomic_write(ckpt_dir / "latest", tag)
        _prune(ckpt_dir, keep_last, newest=tag)
    dist.barrier()
    return tag


def _set_aside(step_dir: Path) -> None:
    """A directory with this tag exists (a damaged checkpoint we did not resume from, or an interrupted
    save): keep it under another name instead of overwriting it; an interrupted save is just removed."""
    if not (step_dir / STATE_FILE).is_file():
        shutil.rmtree(step_dir, ignore_errors=True)
        return
    target = step_dir.with_name(step_dir.name + ".damaged")
    k = 1
    while target.exists():
        target, k = step_dir.with_name(f"{step_dir.name}.damaged{k}"), k + 1
    step_dir.rename(target)
    print(f"kept the damaged checkpoint {step_dir.name} as {target.name} (the run resumed from an older one)", flush=True)


def step_dirs(ckpt_dir: Path) -> list[Path]:
    """Step directories (complete or not), oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step") and p.name[4:].isdigit())


def _prune(ckpt_dir: Path, keep_last: int, newest: str) -> None:
    """Remove interrupted saves older than `newest` and all but the last `keep_last` complete checkpoints up to
    `newest` (the one just written). Later ones (damaged ones the run did not resume from) are left alone."""
    dirs = [p for p in step_dirs(ckpt_dir) if p.name <= newest]
    complete = [p for p in dirs if (p / STATE_FILE).is_file()]
    doomed = [p for p in dirs if p not in complete]  # interrupted saves
    if keep_last > 0:
        doomed += complete[:-keep_last]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)


def size_problems(step_dir: Path, state: dict | None) -> list[str]:
    """Cheap checks on one rank: the state file, and every listed file's presence and size."""
    if state is None:
        return [f"{step_dir / STATE_FILE} is unreadable"]
    problems = []
    for name, meta in (state.get("files") or {}).items():
        f = step_dir / name
        if not f.is_file():
            problems.append(f"{f} is missing")
        elif f.stat().st_size != meta["size"]:
            problems.append(f"{f} has {f.stat().st_size} bytes, {meta['size']} were written")
    return problems


def hash_problems(step_dir: Path, expected: dict, got: dict) -> list[str]:
    return [f"{step_dir / n} does not match its sha256 (changed after it was written)"
            for n in sorted(expected) if got[n]["sha256"] != expected[n]["sha256"]]


def read_state(step_dir: Path) -> dict | None:
    try:
        return json.loads((step_dir / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def find_resumable(ckpt_dir: Path, log=print) -> tuple[str, dict] | None:
    """Collective: (tag, state) of the newest complete and intact checkpoint, the same on every rank,
    or None. Damaged ones are logged by name (rank 0) and skipped."""
    rank = dist.get_rank()
    candidates = [p for p in reversed(step_dirs(ckpt_dir)) if (p / STATE_FILE).is_file()]
    for step_dir in candidates:
        state = read_state(step_dir)
        problems = size_problems(step_dir, state)
        if not _any(bool(problems)) and state.get("files"):
            expected = state["files"]
            got = _shared_hashes(step_dir, sorted(expected))
            problems = hash_problems(step_dir, expected, got)
        elif not problems and rank == 0:
            log(f"warning: {step_dir.name} has no file list (written by an older version); not verified")
        if not _any(bool(problems)):
            return step_dir.name, state
        if rank == 0:
            log(f"checkpoint {step_dir.name} is damaged, trying an older one: " + "; ".join(problems[:4]))
    return None


def load_checkpoint(engine, ckpt_dir: Path, tag: str) -> None:
    path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                     load_lr_scheduler_states=False)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    rng_file = ckpt_dir / tag / f"rng_rank{dist.get_rank():05d}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))


def check_resume_compatible(saved: dict, current: dict) -> None:
    """Refuse to resume across a different model, dataset or global batch, saying what differs (another
    parallel layout is fine: genlip.train.elastic converts)."""
    problems = []
    if saved["model"] != current["model"]:
        diff = {k: (saved["model"].get(k), v) for k, v in current["model"].items() if saved["model"].get(k) != v}
        problems.append(f"model shape differs (checkpoint vs now): {diff}")
    if saved["datasets"] != current["datasets"]:
        problems.append("training data differs (dataset manifests changed); start a new run directory")
    if saved["global_batch_rows"] != current["global_batch_rows"]:
        problems.append(f"train.global_batch_rows differs: checkpoint {saved['global_batch_rows']}, now "
                        f"{current['global_batch_rows']}; the data order is defined per global batch")
    if problems:
        raise ConfigError("cannot resume from this checkpoint:\n  " + "\n  ".join(problems))
