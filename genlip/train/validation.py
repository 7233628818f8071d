"""Validation during training: the caption loss over a fixed set of held-out rows, under any layout.

Which rows: the first packing epoch of each held-out dataset (every sample exactly once), all of its
rows, or the first `train.eval_rows` of them. They are cut into micro-batches of `train.micro_batch_rows`
rows, dealt round-robin to the data-parallel replicas, and the result is the token mean over every
target of the whole set: sum over micro-batches of (micro-batch token mean x its targets) / all targets.
That number depends neither on the layout nor on how rows fall into micro-batches, so TP, PP, ZeRO and
DP runs report the same validation loss for the same weights.

With pipeline parallelism DeepSpeed's `eval_batch` runs one micro-batch at a time (it ends with a
global barrier, so every replica makes the same number of calls: a replica with fewer micro-batches
repeats one with weight 0), and a short last micro-batch is filled with empty rows (no samples, no
targets), since the pipeline's buffers expect a fixed micro-batch shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genlip.data.loader import PackedRows, collate


@dataclass
class ValPlan:
    """This replica's share of the held-out rows."""

    micro_batches: list[list[tuple[int, int]]]
    """Micro-batches of (dataset, row of epoch 0)."""
    weights: list[int]
    """1 for a real micro-batch, 0 for a repeat that only keeps the replicas in step."""
    total_rows: int
    """Held-out rows over all replicas."""


def plan_validation(rows: PackedRows, *, eval_rows: int, micro_rows: int, dp: int, dp_rank: int) -> ValPlan:
    selected = []
    for i, src in enumerate(rows.sources):
        n = src.plan.rows_in_epoch(0)
        selected += [(i, j) for j in range(min(n, eval_rows) if eval_rows > 0 else n)]
    chunks = [selected[k:k + micro_rows] for k in range(0, len(selected), micro_rows)]
    mine = chunks[dp_rank::dp]
    per_rank = -(-len(chunks) // dp)
    weights = [1] * len(mine) + [0] * (per_rank - len(mine))
    mine += [chunks[0]] * (per_rank - len(mine))
    return ValPlan(mine, weights, len(selected))


class _ValMicroBatches(torch.utils.data.Dataset):
    def __init__(self, rows: PackedRows, plan: ValPlan, micro_rows: int, fill: bool):
        self.rows, self.plan, self.micro_rows, self.fill = rows, plan, micro_rows, fill

    def __len__(self):
        return len(self.plan.micro_batches)

    def __getitem__(self, k: int):
        loaded = [self.rows.dataset_row(i, j)[0] for i, j in self.plan.micro_batches[k]]
        if self.fill:
            loaded += [_empty_row(loaded[0])] * (self.micro_rows - len(loaded))
        return collate(loaded)


def _empty_row(like: dict) -> dict:
    return {"pixels": np.zeros((0, like["pixels"].shape[1]), np.uint8), "tokens": np.zeros_like(like["tokens"]),
            "segments": np.zeros_like(like["segments"])}


def val_batches(rows: PackedRows, plan: ValPlan, *, micro_rows: int, fixed_shape: bool, num_workers: int):
    """Iterator of (PackedBatch, weight) over this replica's micro-batches, read by loader workers."""
    data = _ValMicroBatches(rows, plan, micro_rows, fixed_shape)
    loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=num_workers,
                                         generator=torch.Generator())
    return zip(loader, plan.weights)


def batch_targets(batch) -> int:
    """Caption + end targets in a micro-batch: the text length of every sample."""
    return int(batch.segments[..., 3].long().sum())
