"""Loader throughput: our packed-row loader against webdataset streaming the same images from tar.

    python benchmarks/loader_vs_webdataset.py [--samples 2000] [--workers 2] [--repeats 3]

Both read the same stored 224x224 JPEGs (ours from the shard .bin files, webdataset from a tar written
with them), decode, normalise-ready uint8 patchify, and deliver batches through a torch DataLoader with
the same number of workers. Ours also packs rows and builds the segment table. Median samples/s and ratio.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from common import make_raw, make_shards

from genlip.data.images import patchify_uint8
from genlip.data.loader import LoaderSpec, build_loader
from genlip.data.packing import PackingSpec
from genlip.data.shards import open_dataset, read_sample


def stored_tar(ds_root: Path, out: Path) -> Path:
    ds = open_dataset(ds_root)
    with wds.TarWriter(str(out)) as sink:
        for s in range(ds.num_samples):
            image, text, _, _ = read_sample(ds, s)
            sink.write({"__key__": f"{s:09d}", "jpg": bytes(image), "ids.npy": np.asarray(text)})
    return out


def _patchify_sample(sample):
    img, ids = sample
    return patchify_uint8(np.asarray(img), 16), ids


def webdataset_rate(tar: Path, workers: int, samples: int, batch: int) -> float:
    pipe = wds.WebDataset(str(tar), shardshuffle=False, empty_check=False).repeat().decode("rgb8") \
        .to_tuple("jpg", "ids.npy").map(_patchify_sample).batched(batch, collation_fn=list)
    loader = torch.utils.data.DataLoader(pipe, batch_size=None, num_workers=workers)
    return _rate(iter(loader), samples, lambda b: len(b))


def ours_rate(ds_root: Path, workers: int, samples: int) -> float:
    spec = LoaderSpec(datasets=[str(ds_root)], packing=PackingSpec(budget=4096, max_samples_per_row=32),
                      global_rows=1, micro_rows=1, num_workers=workers, check="none")
    return _rate(iter(build_loader(spec)), samples, lambda b: sum(len(i.samples) for i in b[1]))


def _rate(it, samples, count) -> float:
    for _ in range(3):  # warm-up: workers start, files get cached
        next(it)
    n, t0 = 0, time.perf_counter()
    while n < samples:
        n += count(next(it))
    return n / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tars, tok = make_raw(root, samples=1000, per_shard=250, size=224)
        ds = make_shards(root, tars, tok)
        tar = stored_tar(ds, root / "stored.tar")
        wd = sorted(webdataset_rate(tar, args.workers, args.samples, 15) for _ in range(args.repeats))
        ours = sorted(ours_rate(ds, args.workers, args.samples) for _ in range(args.repeats))
        w, o = wd[len(wd) // 2], ours[len(ours) // 2]
        print(f"webdataset (tar stream, {args.workers} workers): {w:8.1f} samples/s")
        print(f"ours (packed rows, {args.workers} workers):        {o:8.1f} samples/s")
        print(f"ratio ours / webdataset: {o / w:.2f}x (median of {args.repeats})")


if __name__ == "__main__":
    main()
