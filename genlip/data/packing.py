"""Packing plans: which samples form each row of one epoch.

A plan is a pure function of (sample lengths, seed, epoch, token budget, max samples per row). The epoch's
order is a seeded permutation; it is cut into windows, each window is packed best-fit decreasing (a row
keeps taking the largest sample that still fits), and the window's rows are shuffled. Rows never split a sample and never exceed the budget. Each
epoch is stored as two `.npy` files (row offsets, sample ids), memory-mapped at training time, so no
epoch but the current one needs to be in memory.

    DATASET/packing/b{budget}_k{max_samples}_s{seed}/plan.json
    DATASET/packing/b{budget}_k{max_samples}_s{seed}/epoch_00003.{rows,samples}.npy
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from genlip.atomic import atomic_save_npy, atomic_write_json
from genlip.data.manifest import DatasetError

PLAN_VERSION = 1


@dataclass(frozen=True)
class PackingSpec:
    """Parameters of a packing plan."""

    budget: int = 16384
    """Token slots per row (image patches + prompt + caption + end of every sample in it)."""
    max_samples_per_row: int = 128
    """Most samples in one row (the segment table's fixed size K)."""
    seed: int = 0
    """Order seed; each epoch draws its own permutation from (seed, epoch)."""
    window: int = 16384
    """Samples packed together; larger packs tighter, smaller keeps the order more random."""

    @property
    def name(self) -> str:
        return f"b{self.budget}_k{self.max_samples_per_row}_s{self.seed}"


def _pack_window(lengths: np.ndarray, budget: int, max_k: int) -> list[np.ndarray]:
    """Rows of positions into `lengths` (one window): best-fit decreasing, a row keeps taking the largest
    sample that still fits, so its leftover is smaller than every sample still unplaced."""
    order = np.argsort(lengths, kind="stable")
    values, starts = np.unique(lengths[order], return_index=True)
    stacks = {int(v): order[a:b].tolist() for v, a, b in zip(values, starts, list(starts[1:]) + [len(order)])}
    keys = [int(v) for v in values]  # ascending lengths that still have samples
    rows = []
    while keys:
        row, room = [], budget
        while len(row) < max_k:
            k = bisect.bisect_right(keys, room) - 1
            if k < 0:
                break
            v = keys[k]
            row.append(stacks[v].pop())
            room -= v
            if not stacks[v]:
                del keys[k]
        rows.append(np.asarray(row, dtype=np.int64))
    return rows


def pack_epoch(lengths: np.ndarray, spec: PackingSpec, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(row_offsets [R+1] int64, samples [N] int64) for one epoch."""
    lengths = np.asarray(lengths, dtype=np.int64)
    too_long = np.flatnonzero(lengths > spec.budget)
    if len(too_long):
        raise ValueError(f"sample {int(too_long[0])} has {int(lengths[too_long[0]])} tokens, more than the "
                         f"packing budget {spec.budget}; raise the budget or rebuild with fewer max patches")
    perm = np.random.default_rng([spec.seed, epoch]).permutation(len(lengths))
    samples, offsets = [], [0]
    for w, start in enumerate(range(0, len(perm), spec.window)):
        idx = perm[start:start + spec.window]
        rows = _pack_window(lengths[idx], spec.budget, spec.max_samples_per_row)
        for r in np.random.default_rng([spec.seed, epoch, w]).permutation(len(rows)):
            samples.append(idx[rows[r]])
            offsets.append(offsets[-1] + len(rows[r]))
    flat = np.concatenate(samples) if samples else np.zeros(0, np.int64)
    return np.asarray(offsets, dtype=np.int64), flat.astype(np.int64)


def fill_rate(lengths: np.ndarray, row_offsets: np.ndarray, budget: int) -> float:
    rows = len(row_offsets) - 1
    return float(np.asarray(lengths, dtype=np.int64).sum()) / (rows * budget) if rows else 0.0


class PackingPlan:
    """The stored plan of one dataset for one `PackingSpec`; epochs are built on first use."""

    def __init__(self, root: str | Path, spec: PackingSpec, *, num_samples: int, dataset_id: str,
                 lengths: np.ndarray | Callable[[], np.ndarray]):
        """`lengths` (tokens per sample) may be a function: only building an epoch needs them, so ranks that
        only read a stored plan never materialise one integer per sample of a billion-sample dataset."""
        self.root, self.dir = Path(root), Path(root) / "packing" / spec.name
        self.spec, self.num_samples, self.dataset_id = spec, num_samples, dataset_id
        self._lengths = lengths
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def lengths(self) -> np.ndarray:
        if callable(self._lengths):
            self._lengths = self._lengths()
        return np.asarray(self._lengths, dtype=np.int64)

    def _paths(self, epoch: int) -> tuple[Path, Path]:
        return self.dir / f"epoch_{epoch:05d}.rows.npy", self.dir / f"epoch_{epoch:05d}.samples.npy"

    def _check_header(self) -> None:
        header = {"version": PLAN_VERSION, "spec": asdict(self.spec), "num_samples": self.num_samples,
                  "dataset": self.dataset_id}
        path = self.dir / "plan.json"
        if path.exists():
            stored = json.loads(path.read_text())
            if {k: stored.get(k) for k in header} != header:
                raise ValueError(f"{path} was made for another dataset or settings; delete {self.dir} to rebuild it")
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, header)

    def build(self, epoch: int) -> float:
        """Compute and store one epoch (idempotent: concurrent builders write identical files). A dataset
        with no samples, or with samples longer than a row, is refused before any file is written."""
        rows_path, samples_path = self._paths(epoch)
        lengths = self.lengths
        if len(lengths) != self.num_samples:
            raise ValueError(f"{len(lengths)} sample lengths for a dataset of {self.num_samples} samples")
        self._check_fits(lengths)
        self._check_header()
        offsets, samples = pack_epoch(lengths, self.spec, epoch)
        if len(offsets) < 2:  # cannot happen once _check_fits passed; an empty epoch would make readers spin
            raise DatasetError(f"{self.root}: epoch {epoch} packs no rows; delete {self.dir} and report this")
        atomic_save_npy(samples_path, samples)
        atomic_save_npy(rows_path, offsets)  # written last: its presence marks a complete epoch
        return fill_rate(lengths, offsets, self.spec.budget)

    def _check_fits(self, lengths: np.ndarray) -> None:
        budget = self.spec.budget
        if not len(lengths):
            raise DatasetError(f"{self.root}: the dataset has no samples, so no row can be packed; rebuild it from "
                               "inputs with valid samples (its manifest.json 'skipped' says why samples were "
                               "dropped) or leave it out")
        too_long = int((lengths > budget).sum())
        if too_long:
            raise DatasetError(f"{self.root}: {too_long} of {len(lengths)} samples need more slots than a row has "
                               f"({budget}: data.seq_len, or --budget; the longest needs {int(lengths.max())}); "
                               "raise it to at least that, or rebuild the dataset with smaller images or a lower "
                               "--max-text-tokens")

    def has(self, epoch: int) -> bool:
        return self._paths(epoch)[0].exists()

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(row_offsets, samples), memory-mapped; built first if missing. Keeps at most two epochs open."""
        if epoch not in self._cache:
            if not self.has(epoch):
                self.build(epoch)
            else:
                self._check_header()
            rows_path, samples_path = self._paths(epoch)
            self._cache[epoch] = (np.load(rows_path, mmap_mode="r"), np.load(samples_path, mmap_mode="r"))
            for old in sorted(self._cache)[:-2]:
                del self._cache[old]
        return self._cache[epoch]

    def rows_in_epoch(self, epoch: int) -> int:
        return len(self.epoch(epoch)[0]) - 1
