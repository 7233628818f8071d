"""genlip-data verify: check a dataset against its manifest; exit 1 on any defect.

Checks: manifest schema; tokenizer and every shard file present with the recorded size and sha256;
each .idx consistent with its .bin; sample and token counts against the manifest; per-sample CRCs;
and that images decode to the recorded patch grid (all, or a random fraction with --decode-fraction).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from genlip.data.images import ImageMode, decode_stored
from genlip.data.shards import DatasetError, check_files, load_manifest, open_dataset, read_sample


def verify(root: Path, *, decode_fraction: float = 1.0, seed: int = 0, quiet: bool = False) -> list[str]:
    """All defects found (empty list: the dataset is intact)."""
    try:
        manifest = load_manifest(root)
    except DatasetError as e:
        return [str(e)]
    defects = check_files(root, manifest, checksums=True)
    if defects:
        return defects  # opening corrupt index files would only repeat these
    try:
        ds = open_dataset(root, check="none")
    except (DatasetError, ValueError, OSError) as e:
        return [str(e)]
    mode: ImageMode = ds.image_mode
    rng = np.random.default_rng(seed)
    for shard, rec in zip(ds.shards, manifest["shards"]):
        tokens = int(shard.text.lengths.astype(np.int64).sum())
        if tokens != rec["text_tokens"]:
            defects.append(f"{root}/shards/{shard.name}.text.bin: {tokens} tokens, manifest says {rec['text_tokens']}")
        if not np.array_equal(shard.text.lengths, shard.meta["text_len"]):
            defects.append(f"{root}/shards/{shard.name}.meta.npy: text lengths disagree with {shard.name}.text.idx")
    total = ds.num_samples
    for s in tqdm(range(total), desc="samples", unit=" samples", disable=quiet):
        try:
            image, _, _, meta = read_sample(ds, s)
            if rng.random() < decode_fraction:
                decode_stored(image, (int(meta["grid_h"]), int(meta["grid_w"])), mode)
        except Exception as e:  # noqa: BLE001 - any failure is a defect to report, with its location
            shard, i = ds.locate(s)
            defects.append(f"{root}/shards/{shard.name}: sample {i}: {e}")
    return defects


def add_parser(sub) -> None:
    ap = sub.add_parser("verify", help="integrity check (non-zero exit on any defect)", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="dataset directory")
    ap.add_argument("--decode-fraction", type=float, default=1.0, help="fraction of images to decode (0..1)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.set_defaults(run=run)


def run(args) -> int:
    defects = verify(args.dataset, decode_fraction=args.decode_fraction, quiet=args.quiet)
    if defects:
        print(f"genlip-data verify: {args.dataset}: {len(defects)} defect(s):", file=sys.stderr)
        for d in defects[:50]:
            print(f"  {d}", file=sys.stderr)
        if len(defects) > 50:
            print(f"  ... and {len(defects) - 50} more", file=sys.stderr)
        return 1
    m = load_manifest(args.dataset)
    print(f"genlip-data verify: {args.dataset}: OK ({m['totals']['samples']} samples in {len(m['shards'])} shards)")
    return 0
