"""Megatron's MMIDIDX `.bin/.idx` format, written and read without megatron.

`.idx`: magic `MMIDIDX\\x00\\x00`, version 1 (<Q), dtype code (<B), sequence count (<Q), document count
(<Q), int32 sequence lengths, int64 byte pointers, int64 document indices. `.bin`: the sequences back to
back. One sequence per document here, so document indices are 0..n. Files written here are read by
`megatron.core.datasets.indexed_dataset.IndexedDataset` (tested through megatron_ext).
"""

from __future__ import annotations

from genlip.errors import UserError

import mmap
import os
import struct
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7,
               np.uint16: 8}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
HEADER_BYTES = len(MAGIC) + 8 + 1 + 8 + 8


class IndexedFormatError(UserError):
    """A .bin/.idx pair that is not a valid MMIDIDX file (message names the file)."""


def map_file(path: str | Path) -> memoryview | bytes:
    """The whole file memory-mapped read-only (b"" when empty): plain `mmap`, a fraction of `np.memmap`'s cost,
    which counts when a billion-sample dataset's shards are opened as they are read."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))


class IndexedWriter:
    """Append sequences to `prefix.bin`; `finalize()` writes `prefix.idx`. Paths are used as given."""

    def __init__(self, bin_path: str | Path, dtype):
        self.bin_path = Path(bin_path)
        self.dtype = np.dtype(dtype).type
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"dtype {dtype} is not an MMIDIDX dtype")
        self._f = open(self.bin_path, "wb")
        self.lengths: list[int] = []

    def add(self, seq) -> None:
        arr = np.ascontiguousarray(seq, dtype=self.dtype)
        self._f.write(arr.tobytes(order="C"))
        self.lengths.append(arr.size)

    def finalize(self, idx_path: str | Path) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        write_index(idx_path, self.dtype, np.asarray(self.lengths, dtype=np.int64))


def write_index(idx_path: str | Path, dtype, lengths: np.ndarray) -> None:
    itemsize = np.dtype(dtype).itemsize
    pointers = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths):
        pointers[1:] = np.cumsum(lengths[:-1] * itemsize)
    with open(idx_path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", VERSION))
        f.write(struct.pack("<B", DTYPE_CODES[np.dtype(dtype).type]))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(lengths) + 1))
        f.write(lengths.astype(np.int32).tobytes())
        f.write(pointers.tobytes())
        f.write(np.arange(len(lengths) + 1, dtype=np.int64).tobytes())
        f.flush()
        os.fsync(f.fileno())


class IndexedReader:
    """Memory-mapped reader of a `.bin/.idx` pair; `reader[i]` is sequence i as a numpy view."""

    def __init__(self, bin_path: str | Path, idx_path: str | Path):
        self.bin_path, self.idx_path = Path(bin_path), Path(idx_path)
        raw = map_file(self.idx_path)
        if len(raw) < HEADER_BYTES or bytes(raw[: len(MAGIC)]) != MAGIC:
            raise IndexedFormatError(f"{self.idx_path}: not an MMIDIDX index (bad magic or truncated header)")
        version, code, n, ndoc = struct.unpack("<QBQQ", bytes(raw[len(MAGIC):HEADER_BYTES]))
        if version != VERSION or code not in CODE_DTYPES:
            raise IndexedFormatError(f"{self.idx_path}: unsupported version {version} or dtype code {code}")
        need = HEADER_BYTES + n * 4 + n * 8 + ndoc * 8
        if len(raw) < need:
            raise IndexedFormatError(f"{self.idx_path}: truncated ({len(raw)} bytes, header promises {need})")
        self.dtype = CODE_DTYPES[code]
        off = HEADER_BYTES
        self.lengths = np.frombuffer(raw, dtype=np.int32, count=n, offset=off)
        self.pointers = np.frombuffer(raw, dtype=np.int64, count=n, offset=off + 4 * n)
        self.doc_indices = np.frombuffer(raw, dtype=np.int64, count=ndoc, offset=off + 12 * n)
        itemsize = np.dtype(self.dtype).itemsize
        expected = int(self.lengths.astype(np.int64).sum()) * itemsize
        actual = self.bin_path.stat().st_size
        if actual != expected:
            raise IndexedFormatError(f"{self.bin_path}: {actual} bytes, but {self.idx_path.name} describes {expected}")
        if n and (self.pointers[0] != 0 or np.any(self.pointers[1:] != np.cumsum(self.lengths[:-1].astype(np.int64) * itemsize))):
            raise IndexedFormatError(f"{self.idx_path}: sequence pointers do not follow the lengths")
        self._bin = map_file(self.bin_path)

    def __len__(self) -> int:
        return len(self.lengths)

    def flat(self) -> np.ndarray:
        """Every sequence back to back (a memory-mapped view of the whole .bin)."""
        return np.frombuffer(self._bin, dtype=self.dtype)

    def __getitem__(self, i: int) -> np.ndarray:
        ptr, n = int(self.pointers[i]), int(self.lengths[i])
        return np.frombuffer(self._bin, dtype=self.dtype, count=n, offset=ptr)
