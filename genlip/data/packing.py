"""Packing plans: which samples form each row of one epoch.

A plan is a pure function of (sample lengths, seed, epoch, token budget, max samples per row). The epoch's
order is a seeded permutation; it is cut into windows, each window is packed best-fit decreasing (a row
keeps taking the largest sample that still fits), and the window's rows are shuffled. Rows never split a
sample and never exceed the budget. Each epoch is stored as two `.npy` files (row offsets, sample ids),
memory-mapped at training time, so no epoch but the current one needs to be in memory.

    DATASET/packing/b{budget}_k{max_samples}_s{seed}/plan.json
    DATASET/packing/b{budget}_k{max_samples}_s{seed}/epoch_00003.{rows,samples}.npy

Scale (benchmarks/data_scale.py): both files are int32 below 2**31 samples, int64 above (plans written
before are int64 throughout and read as they are: the `.npy` header names the dtype, the values are the
same). An epoch is built window by window and streamed to disk, so building one holds the lengths and the
permutation (4 bytes per sample each) and little else: about 8 GB for a billion samples.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from genlip.atomic import atomic_write_json, temporary_name
from genlip.data.manifest import DatasetError

PLAN_VERSION = 1  # the values of a plan are unchanged since version 1; only their dtype narrowed


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


def index_dtype(num_samples: int) -> np.dtype:
    """dtype of a plan's sample ids and row offsets (both at most `num_samples`)."""
    return np.dtype(np.int32 if num_samples < 2**31 else np.int64)


def _pack_window(lengths: np.ndarray, budget: int, max_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions into `lengths` row after row, samples per row) of one window: best-fit decreasing, a row
    keeps taking the largest sample that still fits, so its leftover is smaller than every sample still
    unplaced. Equal lengths are taken last position first.

    NOTE: once length v is the largest that fits, the row keeps taking v while the room allows (every
    longer sample is already too long), so one step takes all of those at once: the same rows as taking
    them one by one, with a Python step per run of equal lengths instead of per sample."""
    # NOTE: numpy's stable sort of 16-bit integers is a radix sort, 7x faster than of int32 (same order)
    order = np.argsort(lengths.astype(np.uint16) if budget < 2**16 else lengths, kind="stable")
    ordered = lengths[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    keys = ordered[starts].tolist()  # ascending lengths that still have samples
    low = dict(zip(keys, starts.tolist()))  # samples of length v: order[low[v]:high[v]], taken from the end
    high = dict(zip(keys, starts[1:].tolist() + [len(order)]))
    take_end, take_n, sizes = [], [], []  # a take: order[end - 1], order[end - 2], ... (n of them)
    bisect_right = bisect.bisect_right
    while keys:
        room, n, k = budget, 0, len(keys)
        while n < max_k:
            k = bisect_right(keys, room, 0, k) - 1  # room only shrinks: search below the last key taken
            if k < 0:
                break
            v = keys[k]
            end = high[v]
            left = end - low[v]
            m = left if not v or left * v <= room else room // v
            if m > max_k - n:
                m = max_k - n
            take_end.append(end)
            take_n.append(m)
            high[v], room, n = end - m, room - m * v, n + m
            if m == left:
                del keys[k]
            else:
                k += 1
        sizes.append(n)
    take_n = np.asarray(take_n, dtype=np.int64)
    first = np.cumsum(take_n) - take_n
    flat = order[np.repeat(np.asarray(take_end, dtype=np.int64) - 1 + first, take_n) - np.arange(len(order))]
    return flat, np.asarray(sizes, dtype=np.int64)


def _check_lengths(lengths: np.ndarray, budget: int) -> None:
    if len(lengths) and lengths.max() > budget:  # NOTE: max() first: no N-sized temporary in the common case
        i = int(np.flatnonzero(lengths > budget)[0])
        raise ValueError(f"sample {i} has {int(lengths[i])} tokens, more than the packing budget {budget}; raise "
                         "the budget or rebuild with fewer max patches")
    if len(lengths) and lengths.min() < 0:
        raise ValueError(f"sample {int(np.argmin(lengths))} has a negative length")


def _as_lengths(lengths) -> np.ndarray:
    """Integer lengths without a copy when they already are (int32 for a billion samples is 4 GB)."""
    lengths = np.asarray(lengths)
    return lengths if lengths.dtype.kind in "iu" else lengths.astype(np.int64)


def iter_epoch(lengths: np.ndarray, spec: PackingSpec, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch, window after window: (sample ids in row order, samples per row). The sample ids of all
    windows together are the epoch's `samples`, the row sizes its `row_offsets` differences."""
    lengths = _as_lengths(lengths)
    _check_lengths(lengths, spec.budget)
    # NOTE: Generator.permutation(n) is shuffle(arange(n)) in int64; shuffling an int32 arange draws the
    # same numbers, so the order is the same at half the memory.
    perm = np.arange(len(lengths), dtype=index_dtype(len(lengths)))
    np.random.default_rng([spec.seed, epoch]).shuffle(perm)
    for w, start in enumerate(range(0, len(perm), spec.window)):
        idx = perm[start:start + spec.window]
        flat, sizes = _pack_window(lengths[idx], spec.budget, spec.max_samples_per_row)
        order = np.random.default_rng([spec.seed, epoch, w]).permutation(len(sizes))
        first = np.cumsum(sizes) - sizes  # where each row starts in `flat`
        shuffled = sizes[order]
        gather = np.repeat(first[order] - (np.cumsum(shuffled) - shuffled), shuffled) + np.arange(len(flat))
        yield idx[flat[gather]], shuffled


def pack_epoch(lengths: np.ndarray, spec: PackingSpec, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(row_offsets [R+1], samples [N]) for one epoch, in memory, both of `index_dtype(N)`."""
    dtype = index_dtype(len(lengths))
    parts = list(iter_epoch(lengths, spec, epoch))
    samples = np.concatenate([p for p, _ in parts]).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
    sizes = np.concatenate([s for _, s in parts]) if parts else np.zeros(0, np.int64)
    return np.concatenate([[0], np.cumsum(sizes)]).astype(dtype), samples


def fill_rate(lengths: np.ndarray, row_offsets: np.ndarray, budget: int) -> float:
    rows = len(row_offsets) - 1
    return float(np.asarray(lengths).sum(dtype=np.int64)) / (rows * budget) if rows else 0.0


def _save_npy_stream(path: Path, dtype: np.dtype, count: int, chunks: Iterable[np.ndarray]) -> None:
    """Write `count` values arriving in chunks as one `.npy`, under a temporary name renamed when complete
    (as genlip.atomic does for whole arrays), without ever holding the whole array."""
    tmp = temporary_name(path)  # builders on other nodes may write the same plan
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                     "fortran_order": False, "shape": (count,)})
            written = 0
            for chunk in chunks:
                f.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
                written += len(chunk)
            if written != count:
                raise RuntimeError(f"{path}: {written} values written, {count} announced")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # disk full, interrupted: no temporary file left behind
        tmp.unlink(missing_ok=True)
        raise


def _offsets(sizes: list[np.ndarray], dtype: np.dtype) -> Iterator[np.ndarray]:
    """Row offsets [0, s0, s0+s1, ...] chunk by chunk from per-window row sizes."""
    total = 0
    yield np.zeros(1, dtype)
    for s in sizes:
        ends = total + np.cumsum(s)
        total = int(ends[-1]) if len(ends) else total
        yield ends


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
        return _as_lengths(self._lengths)

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
        """Compute and store one epoch (idempotent: concurrent builders write identical files; on one host
        a lock makes the others wait for the first and read its files). A dataset with no samples, or with
        samples longer than a row, is refused before any file is written."""
        rows_path, samples_path = self._paths(epoch)
        lengths = self.lengths
        if len(lengths) != self.num_samples:
            raise ValueError(f"{len(lengths)} sample lengths for a dataset of {self.num_samples} samples")
        self._check_fits(lengths)
        self._check_header()
        # NOTE: every rank and loader worker that meets a missing epoch comes here; without the lock each
        # would hold its own copy of the lengths and the permutation (8 GB at a billion samples).
        with open(self.dir / f".epoch_{epoch:05d}.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
            except OSError:  # a file system without locks (some Lustre/NFS mounts): concurrent builds, as before
                pass
            if not rows_path.exists():
                dtype, sizes = index_dtype(len(lengths)), []

                def windows():
                    for samples, row_sizes in iter_epoch(lengths, self.spec, epoch):
                        sizes.append(row_sizes.astype(dtype))
                        yield samples

                _save_npy_stream(samples_path, dtype, len(lengths), windows())
                rows = sum(len(s) for s in sizes)
                if rows == 0:  # cannot happen once _check_fits passed; an empty epoch would make readers spin
                    raise DatasetError(f"{self.root}: epoch {epoch} packs no rows; delete {self.dir} and report this")
                _save_npy_stream(rows_path, dtype, rows + 1, _offsets(sizes, dtype))  # last: marks it complete
        return fill_rate(lengths, np.load(rows_path, mmap_mode="r"), self.spec.budget)

    def _check_fits(self, lengths: np.ndarray) -> None:
        budget = self.spec.budget
        if not len(lengths):
            raise DatasetError(f"{self.root}: the dataset has no samples, so no row can be packed; rebuild it from "
                               "inputs with valid samples (its manifest.json 'skipped' says why samples were "
                               "dropped) or leave it out")
        longest = int(lengths.max())
        if longest > budget:
            too_long = int((lengths > budget).sum())
            raise DatasetError(f"{self.root}: {too_long} of {len(lengths)} samples need more slots than a row has "
                               f"({budget}: data.seq_len, or --budget; the longest needs {longest}); "
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
