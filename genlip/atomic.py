"""Write-then-rename: a reader (or a restarted job) never sees a half-written file."""

from __future__ import annotations

import io
import json
import os
import socket
from pathlib import Path

import numpy as np


def atomic_write(path: str | Path, data: bytes | str) -> None:
    path = Path(path)
    # unique per process and host: SLURM array tasks may write the same file into a shared directory at once
    tmp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
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
