"""genlip-data verify: check a dataset against its manifest; exit 1 on any defect.

Every manifest field is re-derived from the files: the structure (types, keys); the tokenizer file's
sha256, and its vocabulary size, end ids and prompt ids against the recorded ones; the shard list against
the shards on disk and each record against its NAME.done.json; every shard file present with the recorded
size and sha256; each .idx consistent with its .bin; samples, tokens and patches of every shard from its
index files, and the totals from the records; token ids below the vocabulary size and every caption
ending in the end ids; the stored patch grids and image bytes against the image mode; per-sample CRCs;
and images decoding to their patch grid (all, or a random fraction with --decode-fraction).
Not checkable: `command` (free text) and the JPEG `quality` (only recorded).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from genlip.data.images import ImageMode, decode_stored
from genlip.data.manifest import record_defects, tokenizer_defects
from genlip.data.shards import DatasetError, Shard, check_files, load_manifest, open_dataset, read_sample


def verify(root: Path, *, decode_fraction: float = 1.0, seed: int = 0, quiet: bool = False) -> list[str]:
    """All defects found (empty list: the dataset is intact)."""
    try:
        manifest = load_manifest(root)
    except DatasetError as e:
        return [str(e)]
    defects = record_defects(root, manifest)
    if not any(rec["samples"] for rec in manifest["shards"]):
        defects.append(f"{root}: the dataset has no samples, so training and evaluation cannot use it; rebuild it "
                       "from inputs with valid samples (manifest.json 'skipped' says why samples were dropped)")
    damaged = check_files(root, manifest, level="full")
    if damaged:
        return defects + damaged  # opening corrupt index files would only repeat these
    defects += tokenizer_defects(root, manifest)
    try:
        ds = open_dataset(root, check="none")
    except (DatasetError, ValueError, OSError) as e:
        return defects + [str(e)]
    mode: ImageMode = ds.image_mode
    rng = np.random.default_rng(seed)
    unreadable = set()
    for k, rec in enumerate(manifest["shards"]):
        try:
            shard = ds.shards[k]  # opening checks its files against each other and the record
        except (DatasetError, ValueError, OSError) as e:
            unreadable.add(k)
            defects.append(str(e))
            continue
        defects += shard_defects(root, shard, rec, manifest)
    total = ds.num_samples
    for s in tqdm(range(total), desc="samples", unit=" samples", disable=quiet):
        if int(np.searchsorted(ds.offsets, s, side="right")) - 1 in unreadable:
            continue
        try:
            image, _, _, meta = read_sample(ds, s)
            if rng.random() < decode_fraction:
                decode_stored(image, (int(meta["grid_h"]), int(meta["grid_w"])), mode)
        except Exception as e:  # noqa: BLE001 - any failure is a defect to report, with its location
            shard, i = ds.locate(s)
            defects.append(f"{root}/shards/{shard.name}: sample {i}: {e}")
    return defects


def shard_defects(root: Path, shard: Shard, rec: dict, manifest: dict) -> list[str]:
    """One shard's record (tokens, patches), token ids, end ids, prompt lengths and image grids/bytes,
    re-derived from its index and meta files."""
    where, meta, defects = f"{root}/shards/{shard.name}", shard.meta, []
    tokens = int(shard.text.lengths.astype(np.int64).sum())
    if tokens != rec["text_tokens"]:
        defects.append(f"{where}.text.bin: {tokens} tokens, manifest says {rec['text_tokens']}")
    if not np.array_equal(shard.text.lengths, meta["text_len"]):
        defects.append(f"{where}.meta.npy: text lengths disagree with {shard.name}.text.idx")
    grid_h, grid_w = meta["grid_h"].astype(np.int64), meta["grid_w"].astype(np.int64)
    patches = int((grid_h * grid_w).sum())
    if patches != rec["patches"]:
        defects.append(f"{where}.meta.npy: {patches} patches, manifest says {rec['patches']}")
    vocab, end_ids = manifest["tokenizer"]["vocab_size"], manifest["tokenizer"]["end_ids"]
    for kind, reader in (("text", shard.text), ("prompt", shard.prompt)):
        ids = reader.flat() if reader is not None else np.zeros(0, np.int64)
        if len(ids) and int(ids.max()) >= vocab:
            defects.append(f"{where}.{kind}.bin: token id {int(ids.max())} is not below tokenizer.vocab_size {vocab} "
                           "(the manifest's vocab_size was edited, or the shard belongs to another tokenizer)")
        if kind == "text" and len(ids):
            ends = np.cumsum(shard.text.lengths.astype(np.int64))
            tails = ends[:, None] - len(end_ids) + np.arange(len(end_ids))  # the last len(end_ids) tokens
            if np.any(shard.text.lengths < len(end_ids)) or np.any(ids[tails] != np.asarray(end_ids)):
                defects.append(f"{where}.text.bin: captions do not end with tokenizer.end_ids {end_ids}")
    if shard.prompt is not None and not np.array_equal(shard.prompt.lengths, meta["prompt_len"]):
        defects.append(f"{where}.meta.npy: prompt lengths disagree with {shard.name}.prompt.idx")
    image, p = manifest["image"], manifest["image"]["patch_size"]
    if image["kind"] == "fixed":
        side = image["size"] // p
        bad = (grid_h != side) | (grid_w != side)
        expect = f"{side}x{side} patches (image.size {image['size']} / image.patch_size {p})"
    else:
        bad = (grid_h * grid_w < image["min_patches"]) | (grid_h * grid_w > image["max_patches"])
        expect = f"image.min_patches {image['min_patches']} .. image.max_patches {image['max_patches']} patches"
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        defects.append(f"{where}.meta.npy: sample {i} has a {grid_h[i]}x{grid_w[i]} patch grid, the manifest's image "
                       f"mode needs {expect} ({int(bad.sum())} such samples)")
    if image["encoding"] == "raw":
        wrong = shard.image.lengths.astype(np.int64) != grid_h * grid_w * p * p * 3
        if np.any(wrong):
            defects.append(f"{where}.image.bin: {int(wrong.sum())} images are not raw {p}-pixel patch grids of "
                           "uint8 RGB (image.encoding or image.patch_size does not match the stored images)")
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
