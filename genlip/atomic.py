"""Write-then-rename: a reader (or a restarted job) never sees a half-written file."""

from __future__ import annotations

import io
import json
import os
import socket
from pathlib import Path

import numpy as np


def temporary_name(path: str | Path) -> Path:
    """Where to write `path` before renaming it into place: hidden, next to it, and unique per host and
    process (SLURM array tasks, or a job and a command run by hand, may write the same file at once)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def atomic_write(path: str | Path, data: bytes | str) -> None:
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # disk full, I/O error, interrupted: leave the old file and no temporary one
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def atomic_save_npy(path: str | Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write(path, buf.getvalue())
