"""genlip-data inspect: statistics of a dataset, and N samples dumped as PNG + caption to look at."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from genlip.data.images import decode_stored
from genlip.data.shards import open_dataset, read_sample
from genlip.data.tokenizer import Tokenizer


def stats(root: Path) -> dict:
    ds = open_dataset(root, check="quick")
    meta = np.concatenate([s.meta for s in ds.shards]) if ds.shards else np.zeros(0)
    text = meta["text_len"].astype(np.int64) if len(meta) else np.zeros(0, np.int64)
    grids = Counter(zip(meta["grid_h"].tolist(), meta["grid_w"].tolist())) if len(meta) else Counter()
    q = [0, 10, 50, 90, 99, 100]
    return {
        "samples": ds.num_samples,
        "shards": len(ds.shards),
        "image_mode": ds.manifest["image"],
        "caption_tokens_percentiles": dict(zip(map(str, q), np.percentile(text, q).tolist())) if len(text) else {},
        "caption_tokens_mean": float(text.mean()) if len(text) else 0.0,
        "caption_tokens_histogram": _histogram(text),
        "patch_grids": {f"{h}x{w}": n for (h, w), n in grids.most_common(20)},
        "skipped": {r: i["count"] for r, i in ds.manifest["skipped"].items()},
    }


def _histogram(values: np.ndarray, bins: int = 10) -> list[tuple[int, int, int]]:
    """[(low, high, count)] over `bins` equal-width integer bins."""
    if not len(values):
        return []
    counts, edges = np.histogram(values, bins=min(bins, int(values.max() - values.min()) + 1))
    return [(int(np.ceil(lo)), int(np.floor(hi)), int(c)) for lo, hi, c in zip(edges[:-1], edges[1:], counts)]


def dump(root: Path, out: Path, n: int, seed: int = 0) -> list[Path]:
    ds = open_dataset(root, check="quick")
    tok = Tokenizer(root / ds.manifest["tokenizer"]["file"])
    out.mkdir(parents=True, exist_ok=True)
    picks = np.random.default_rng(seed).choice(ds.num_samples, size=min(n, ds.num_samples), replace=False)
    written = []
    for s in sorted(picks.tolist()):
        image, text, prompt, meta = read_sample(ds, s)
        arr = decode_stored(image, (int(meta["grid_h"]), int(meta["grid_w"])), ds.image_mode)
        path = out / f"sample_{s:09d}.png"
        Image.fromarray(arr).save(path)
        path.with_suffix(".txt").write_text(tok.decode(text) + "\n")
        written.append(path)
    return written


def add_parser(sub) -> None:
    ap = sub.add_parser("inspect", help="statistics and sample dumps", description=__doc__,
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("dataset", type=Path, help="dataset directory")
    ap.add_argument("--dump", type=int, default=0, help="number of random samples to write as PNG + .txt")
    ap.add_argument("--dump-dir", type=Path, default=Path("inspect_samples"), help="where to write them")
    ap.add_argument("--json", action="store_true", help="print statistics as JSON")
    ap.set_defaults(run=run)


def run(args) -> int:
    st = stats(args.dataset)
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        print(f"{args.dataset}: {st['samples']} samples in {st['shards']} shards; image mode {st['image_mode']['kind']}")
        print(f"caption+end tokens: mean {st['caption_tokens_mean']:.1f}, percentiles {st['caption_tokens_percentiles']}")
        peak = max((c for _, _, c in st["caption_tokens_histogram"]), default=1)
        for lo, hi, c in st["caption_tokens_histogram"]:
            print(f"  {lo:>5}-{hi:<5} {c:>9}  {'#' * max(1 if c else 0, round(40 * c / peak))}")
        print("patch grids (most common): " + ", ".join(f"{g}: {n}" for g, n in st["patch_grids"].items()))
        print("skipped: " + (", ".join(f"{r}: {n}" for r, n in st["skipped"].items()) or "none"))
    if args.dump:
        paths = dump(args.dataset, args.dump_dir, args.dump)
        print(f"wrote {len(paths)} samples (PNG + caption .txt) to {args.dump_dir}")
    return 0
