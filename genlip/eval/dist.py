"""Data parallelism for evaluation: which samples a rank evaluates, and gathering the results.

The evaluated set is cut into global chunks of `CHUNK` consecutive samples; rank r of W evaluates
chunks r, r + W, r + 2W, ... Batches are built inside one chunk only, so every sample is computed in
exactly the same batch (same shapes, same neighbours) whatever the number of ranks: DP2 gives the same
per-sample numbers as DP1, bit for bit, and results are combined in global sample order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist

CHUNK = 64
"""Samples per work unit (a batch never spans two units)."""


@dataclass
class EvalGroup:
    """This process's place among the ranks that share one evaluation."""

    rank: int = 0
    world: int = 1
    group: object = None
    """A torch.distributed process group (None: the default group, or no distribution when world is 1)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns_chunk(self, chunk: int) -> bool:
        return chunk % self.world == self.rank

    def owns(self, index: int) -> bool:
        """Whether global sample `index` is evaluated here."""
        return self.owns_chunk(index // CHUNK)

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects, gloo or nccl)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def gather_indexed(self, items: dict) -> dict:
        """Union of every rank's {global index: result}, in global index order."""
        merged: dict = {}
        for part in self.gather(items):
            merged.update(part)
        return dict(sorted(merged.items()))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.group)


def group_of(pg=None) -> EvalGroup:
    """The EvalGroup of a torch.distributed group (None: the default group if initialised, else one rank)."""
    if not dist.is_available() or not dist.is_initialized():
        return EvalGroup()
    return EvalGroup(dist.get_rank(pg), dist.get_world_size(pg), pg)


def init_from_env() -> tuple[EvalGroup, bool]:
    """(group, whether it was created here): join the ranks started by torchrun (gloo) when WORLD_SIZE > 1
    and no process group exists yet; otherwise the existing group or a single rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")
        return group_of(), True
    return group_of(), False
