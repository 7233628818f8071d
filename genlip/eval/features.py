"""Frozen patch features for probes: extraction, gathering over ranks and an on-disk cache.

Features are the final-LN patch features (`GenLIP.features`; no CLS token), computed with image
tokens only: image tokens never attend to text, so the prompt and caption do not change them.
The cache file is named by a SHA-256 over the model weights, the content of every input file, the
image settings, the label field and the sample limit, so a cache made for other weights, data or
settings is never reused.

Legend: N images, P patches of one image, D width.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from genlip.atomic import atomic_write
from genlip.data.sources import INPUT_SUFFIXES
from genlip.eval.batching import Sequence, make_packed_batch, pack_rows
from genlip.eval.dist import EvalGroup
from genlip.eval.inputs import EvalData, EvalInputError, _images_in

CACHE_VERSION = 1


@dataclass
class FeatureSet:
    """Patch features of a set of images, concatenated, with per-image offsets."""

    features: np.ndarray
    """float32 [sum of P, D]."""
    offsets: np.ndarray
    """int64 [N + 1]: image i owns features[offsets[i]:offsets[i + 1]]."""
    keys: list[str]
    labels: list[str | None]

    def __len__(self) -> int:
        return len(self.keys)

    def mean_pooled(self) -> np.ndarray:
        """float32 [N, D]: each image's patch features averaged."""
        sums = np.add.reduceat(self.features.astype(np.float64), self.offsets[:-1], axis=0)
        return (sums / np.diff(self.offsets)[:, None]).astype(np.float32)

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([N, P_max, D] features, [N, P_max] bool: True at real patches)."""
        n, lens = len(self), np.diff(self.offsets)
        x = torch.zeros(n, int(lens.max()), self.features.shape[1])
        mask = torch.zeros(n, int(lens.max()), dtype=torch.bool)
        for i in range(n):
            x[i, :lens[i]] = torch.from_numpy(self.features[self.offsets[i]:self.offsets[i + 1]])
            mask[i, :lens[i]] = True
        return x, mask


@torch.no_grad()
def chunk_features(model, samples, *, row_tokens: int = 4096, max_per_row: int = 64) -> list[np.ndarray]:
    """[P, D] float32 features of each sample of one chunk."""
    device = next(model.parameters()).device
    seqs = [Sequence(s.pixels, s.grid, [], []) for s in samples]
    longest = max(q.length for q in seqs)
    rows = pack_rows([q.length for q in seqs], row_tokens=max(row_tokens, longest), max_per_row=max_per_row)
    feats = model.features(make_packed_batch(seqs, rows).to(device)).float().cpu().numpy()
    out: list[np.ndarray | None] = [None] * len(seqs)
    start = 0
    for i in [i for row in rows for i in row]:  # pixels are in (row, slot) order
        n = seqs[i].grid[0] * seqs[i].grid[1]
        out[i] = feats[start:start + n]
        start += n
    return out


def extract_features(model, data: EvalData, group: EvalGroup, *, progress: bool = True,
                     desc: str = "features") -> FeatureSet:
    """Features of every readable image of `data`, in global order, on every rank."""
    mine: dict[int, np.ndarray] = {}
    for chunk in data.chunks(group, desc=desc, progress=progress):
        for s, f in zip(chunk, chunk_features(model, chunk)):
            mine[s.index] = f
    gathered = group.gather_indexed(mine)
    if not gathered:
        raise EvalInputError(f"no images could be read from {', '.join(map(str, data.paths))}")
    feats = list(gathered.values())
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in feats])]).astype(np.int64)
    return FeatureSet(np.concatenate(feats).astype(np.float32), offsets,
                      [data.samples[i].key for i in gathered], [data.samples[i].label for i in gathered])


# ---- the cache ------------------------------------------------------------------------------------------
def weights_digest(model) -> str:
    """SHA-256 over parameter names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _file_digest(path: Path, h) -> None:
    h.update(f"{path.name}:{path.stat().st_size}:".encode())
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)


def data_digest(data: EvalData) -> str:
    """SHA-256 over the content of every input file (shards: their manifest, which holds every file's hash)."""
    h = hashlib.sha256()
    for path, kind in zip(data.paths, data.kinds):
        h.update(f"|{kind}|".encode())
        if kind == "shards":
            _file_digest(path / "manifest.json", h)
        elif kind == "image_folder":
            for folder in sorted(d for d in path.iterdir() if d.is_dir()):
                for f in _images_in(folder):
                    h.update(f"{folder.name}/".encode())
                    _file_digest(f, h)
        else:
            files = [path] if path.is_file() else sorted(f for f in path.iterdir()
                                                         if f.is_file() and f.suffix in INPUT_SUFFIXES)
            for f in files:
                _file_digest(f, h)
    return h.hexdigest()


def cache_key(model_digest: str, data: EvalData) -> str:
    opts = data.options
    settings = {"version": CACHE_VERSION, "model": model_digest, "data": data_digest(data),
                "image": asdict(opts.image_mode), "source": asdict(opts.source), "label_field": opts.label_field,
                "limit": opts.limit}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def save_features(path: Path, fs: FeatureSet) -> None:
    buf = io.BytesIO()
    np.savez(buf, features=fs.features, offsets=fs.offsets,
             meta=np.frombuffer(json.dumps({"keys": fs.keys, "labels": fs.labels}).encode(), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())


def load_features(path: Path) -> FeatureSet:
    with np.load(path) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        return FeatureSet(z["features"], z["offsets"], meta["keys"], meta["labels"])


def cached_features(model, data: EvalData, group: EvalGroup, cache_dir: str | Path | None, *,
                    model_digest: str | None = None, progress: bool = True,
                    desc: str = "features") -> tuple[FeatureSet, dict]:
    """(`extract_features`, {"cache": file or None, "cache_hit": bool}); read from / written to `cache_dir`
    when given (rank 0 writes)."""
    if cache_dir is None:
        return extract_features(model, data, group, progress=progress, desc=desc), {"cache": None, "cache_hit": False}
    key = cache_key(model_digest or weights_digest(model), data)
    path = Path(cache_dir) / f"features-{key[:32]}.npz"
    # Rank 0 decides, so that every rank takes the same branch (the extraction has collectives).
    if group.gather(path.is_file())[0]:
        return load_features(path), {"cache": str(path), "cache_hit": True}
    fs = extract_features(model, data, group, progress=progress, desc=desc)
    if group.is_main:
        save_features(path, fs)
    group.barrier()
    return fs, {"cache": str(path), "cache_hit": False}
