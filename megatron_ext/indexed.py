"""megatron-core's reader of `.bin/.idx` files, for checking that our shards are Megatron-compatible."""

from __future__ import annotations

import numpy as np


def read_megatron_indexed(prefix: str) -> list[np.ndarray]:
    """Every sequence of `prefix.bin/.idx` as read by megatron.core's IndexedDataset."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    # copies: IndexedDataset closes its memory map when it is garbage-collected
    return [np.array(ds[i]) for i in range(len(ds))]
