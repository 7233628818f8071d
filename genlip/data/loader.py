"""The training loader: packed rows from shard datasets, deterministic and resumable.

Global row r of the run is a pure function of (datasets, weights, packing spec, r): the blend schedule maps
r to (dataset i, row j of that dataset), and dataset i's packing plan maps j to (epoch, row of that
epoch) and so to samples. Training step s consumes global rows [s*G, (s+1)*G) (G = global batch in
rows); data-parallel rank d takes the contiguous slice d*G/D .. (d+1)*G/D of them, in micro-batches of
B rows. The whole loader state is one integer, the number of global rows consumed, so a run resumes on
any number of DP ranks as long as G is unchanged. Worker processes read, decode and patchify.

Legend: G global rows per step, D data-parallel ranks, B rows per micro-batch, S slots per row,
K samples per row at most.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from genlip.data.images import decode_stored, patchify_uint8
from genlip.data.packing import PackingPlan, PackingSpec
from genlip.data.shards import DatasetError, ShardDataset, manifest_hash, open_dataset, read_sample
from genlip.errors import UserError
from genlip.model.batch import PackedBatch

BLEND_BLOCK = 1000  # the blend schedule repeats every BLEND_BLOCK rows


@dataclass
class LoaderSpec:
    """What the loader reads and how it slices the global row stream."""

    datasets: list[str]
    """Dataset directories."""
    weights: list[float] = field(default_factory=list)
    """Blend weights (default: equal)."""
    packing: PackingSpec = field(default_factory=PackingSpec)
    """Row budget (= sequence length), samples per row, seed."""
    global_rows: int = 1
    """Rows per optimizer step over all data-parallel ranks (G)."""
    micro_rows: int = 1
    """Rows per micro-batch on one rank (B)."""
    num_workers: int = 2
    """Worker processes per rank that read, decode and patchify."""
    check: str = "auto"
    """Integrity check at start-up: full (sha256 of every file), quick (sizes, index hashes), auto, none."""


def blend_schedule(weights: list[float], block: int = BLEND_BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dataset [block], rank within its dataset in the block [block], rows per dataset per block).

    Rows per dataset are the largest-remainder rounding of block*weights; within a block they are
    interleaved greedily (the dataset furthest behind its share goes next), so any prefix is close to
    the weights."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"blend weights {weights} must be non-negative with a positive sum")
    w = w / w.sum()
    counts = np.floor(w * block).astype(np.int64)
    for i in np.argsort(-(w * block - counts), kind="stable")[: block - counts.sum()]:
        counts[i] += 1
    which = np.zeros(block, dtype=np.int64)
    rank = np.zeros(block, dtype=np.int64)
    taken = np.zeros(len(w), dtype=np.int64)
    for r in range(block):
        i = int(np.argmax(np.where(taken < counts, counts * (r + 1) / block - taken, -np.inf)))
        which[r], rank[r] = i, taken[i]
        taken[i] += 1
    return which, rank, counts


def sample_lengths(ds: ShardDataset, prompt_len: int) -> np.ndarray:
    """Slots per sample (int32), filled shard by shard: `ds.lengths` builds int64 per shard and then joins
    them, four times the memory at its peak (16 GB instead of 4 GB for a billion samples) in the packing process."""
    out = np.empty(ds.num_samples, dtype=np.int32)
    for s, start in enumerate(ds.offsets[:-1].tolist()):
        n = ds.shard_lengths(s, prompt_len)
        out[start:start + len(n)] = np.minimum(n, np.iinfo(np.int32).max)  # longer never fits a row anyway
    return out


class RowSource:
    """Rows of one dataset across epochs: dataset row j -> samples (global indices of the dataset)."""

    def __init__(self, ds: ShardDataset, spec: PackingSpec):
        self.ds = ds
        prompt_len = len(ds.manifest["prompt"]["ids"])
        self.plan = PackingPlan(ds.root, spec, num_samples=ds.num_samples, dataset_id=manifest_hash(ds.root),
                                lengths=lambda: sample_lengths(ds, prompt_len))
        self._epoch_starts = [0]  # first dataset row of each epoch computed so far

    def locate(self, j: int) -> tuple[int, int]:
        """(epoch, row in epoch) of dataset row j."""
        while self._epoch_starts[-1] <= j:
            e = len(self._epoch_starts) - 1
            rows = self.plan.rows_in_epoch(e)
            if rows == 0:  # an empty epoch would make this loop build epochs forever
                raise DatasetError(f"{self.plan.dir}: epoch {e} of the stored packing plan has no rows (made by an "
                                   f"older version for a dataset with no samples); delete {self.plan.dir}")
            self._epoch_starts.append(self._epoch_starts[-1] + rows)
        e = int(np.searchsorted(self._epoch_starts, j, side="right")) - 1
        return e, j - self._epoch_starts[e]

    def samples(self, j: int) -> np.ndarray:
        epoch, row = self.locate(j)
        offsets, samples = self.plan.epoch(epoch)
        return np.asarray(samples[offsets[row]:offsets[row + 1]])


@dataclass
class RowInfo:
    """Where a loaded row came from (for logs, resume checks and tests)."""

    global_row: int
    dataset: int
    samples: np.ndarray  # global sample indices within that dataset
    key_hashes: np.ndarray


class PackedRows:
    """Global row r -> one packed row (pixels uint8 patches, tokens, segments) with its `RowInfo`."""

    def __init__(self, spec: LoaderSpec):
        self.spec = spec
        self.datasets = [open_dataset(p, check=spec.check) for p in spec.datasets]
        for d in self.datasets:
            if d.num_samples == 0:
                raise DatasetError(f"{d.root}: the dataset has no samples (its manifest.json lists "
                                   f"{len(d.shards)} shard(s) holding none); rebuild it from inputs with valid samples "
                                   "(its 'skipped' counts say why samples were dropped) or leave it out")
        modes = {(d.image_mode.patch_size,) for d in self.datasets}
        if len(modes) > 1:
            raise ValueError("blended datasets must share a patch size")
        self.patch = self.datasets[0].image_mode.patch_size
        self.sources = [RowSource(d, spec.packing) for d in self.datasets]
        weights = spec.weights or [1.0] * len(self.datasets)
        if len(weights) != len(self.datasets):
            raise ValueError(f"{len(weights)} blend weights for {len(self.datasets)} datasets")
        self.which, self.rank, self.per_block = blend_schedule(weights)

    def locate(self, r: int) -> tuple[int, int]:
        """(dataset, dataset row) of global row r."""
        block, pos = divmod(r, BLEND_BLOCK)
        i = int(self.which[pos])
        return i, block * int(self.per_block[i]) + int(self.rank[pos])

    def row(self, r: int) -> tuple[dict, RowInfo]:
        return self.dataset_row(*self.locate(r), global_row=r)

    def dataset_row(self, i: int, j: int, *, global_row: int = -1) -> tuple[dict, RowInfo]:
        """Row j of dataset i (across its epochs), as `row` returns it."""
        ds = self.datasets[i]
        default_prompt = np.asarray(ds.manifest["prompt"]["ids"], dtype=np.int64)
        vocab = ds.manifest["tokenizer"]["vocab_size"]
        S, K = self.spec.packing.budget, self.spec.packing.max_samples_per_row
        idx = self.sources[i].samples(j)
        tokens = np.zeros(S, dtype=np.int64)
        segments = np.zeros((K, 4), dtype=np.int64)
        patches, keys, pos = [], [], 0
        for k, s in enumerate(idx):
            image, text, prompt, meta = read_sample(ds, int(s))
            grid = (int(meta["grid_h"]), int(meta["grid_w"]))
            prompt = default_prompt if prompt is None else prompt
            # NOTE: an id past the vocabulary fails the embedding on one process but is silently zeroed by
            # the vocab-parallel embedding under TP; refuse it in either case.
            if max(int(text.max(initial=0)), int(prompt.max(initial=0))) >= vocab:
                raise DatasetError(f"{ds.root}: sample {int(s)} holds a token id not below the tokenizer's "
                                   f"vocab_size {vocab}; run `genlip-data verify {ds.root}`")
            patches.append(patchify_uint8(decode_stored(image, grid, ds.image_mode), self.patch))
            pos += grid[0] * grid[1]
            tokens[pos:pos + len(prompt)] = prompt
            tokens[pos + len(prompt):pos + len(prompt) + len(text)] = text
            pos += len(prompt) + len(text)
            segments[k] = (grid[0], grid[1], len(prompt), len(text))
            keys.append(int(meta["key_hash"]))
        pixels = np.concatenate(patches) if patches else np.zeros((0, 3 * self.patch**2), np.uint8)
        info = RowInfo(global_row, i, idx, np.asarray(keys, dtype=np.uint64))
        return {"pixels": pixels, "tokens": tokens, "segments": segments}, info


class MicroBatches(torch.utils.data.Dataset):
    """Micro-batch k of one data-parallel rank -> (PackedBatch, [RowInfo])."""

    def __init__(self, rows: PackedRows, *, dp_rank: int, dp_size: int):
        spec = rows.spec
        if spec.global_rows % (dp_size * spec.micro_rows):
            raise ValueError(f"global batch of {spec.global_rows} rows is not divisible by dp ({dp_size}) x "
                             f"micro-batch rows ({spec.micro_rows})")
        self.rows, self.dp_rank, self.dp_size = rows, dp_rank, dp_size
        self.per_rank = spec.global_rows // dp_size
        self.accum = self.per_rank // spec.micro_rows  # micro-batches per step (gradient accumulation)

    def global_rows(self, k: int) -> range:
        step, m = divmod(k, self.accum)
        first = step * self.rows.spec.global_rows + self.dp_rank * self.per_rank + m * self.rows.spec.micro_rows
        return range(first, first + self.rows.spec.micro_rows)

    def __getitem__(self, k: int):
        try:
            loaded = [self.rows.row(r) for r in self.global_rows(k)]
        except UserError as e:  # raised in a worker process, torch would wrap it in the worker's traceback text
            return _Failed(e)
        return collate([d for d, _ in loaded]), [info for _, info in loaded]

    def __len__(self):  # effectively unbounded; the trainer decides when to stop
        return 2**62




class _Failed:
    """A micro-batch that could not be read: the error travels from the worker as data, and the main process
    raises it as it was (a one-line message naming the file and sample), not wrapped in a traceback."""

    def __init__(self, error: UserError):
        self.error = error


class Loader:
    """The DataLoader's batches; raises a micro-batch's read error where the batch is taken."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader

    def __iter__(self):
        return _Raising(iter(self.loader))  # iter() now: the workers start prefetching at once


class _Raising:
    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.it)
        if isinstance(item, _Failed):
            raise item.error
        return item


def collate(rows: list[dict]) -> PackedBatch:
    return PackedBatch(torch.from_numpy(np.concatenate([r["pixels"] for r in rows])),
                       torch.from_numpy(np.stack([r["tokens"] for r in rows])),
                       torch.from_numpy(np.stack([r["segments"] for r in rows]).astype(np.int32)))


def _identity(x):
    return x


class _From(torch.utils.data.Sampler):
    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        k = self.start
        while True:
            yield k
            k += 1


def build_loader(spec: LoaderSpec, *, dp_rank: int = 0, dp_size: int = 1, rows_consumed: int = 0,
                 pin_memory: bool = False):
    """An iterator of (PackedBatch, [RowInfo]) for this rank, starting after `rows_consumed` global rows."""
    if rows_consumed % spec.global_rows:
        raise ValueError(f"rows_consumed={rows_consumed} is not a whole number of steps of {spec.global_rows} rows; "
                         "resume needs the global batch the checkpoint was made with")
    micro = MicroBatches(PackedRows(spec), dp_rank=dp_rank, dp_size=dp_size)
    start = rows_consumed // spec.global_rows * micro.accum
    # NOTE: its own generator, so that starting a loader never draws from the global RNG (which DropPath
    # uses and checkpoints restore): a resumed run must see the same random numbers as an unbroken one.
    return Loader(torch.utils.data.DataLoader(micro, batch_size=None, sampler=_From(start),
                                              num_workers=spec.num_workers, collate_fn=_identity,
                                              pin_memory=pin_memory,
                                              generator=torch.Generator().manual_seed(spec.packing.seed),
                                              persistent_workers=spec.num_workers > 0,
                                              prefetch_factor=4 if spec.num_workers > 0 else None))


__all__ = ["Loader", "LoaderSpec", "MicroBatches", "PackedRows", "RowInfo", "blend_schedule", "build_loader", "collate"]
