"""Loader overhead: our row loader (one process) against the bare cost of decoding the same JPEGs.

    python benchmarks/loader_vs_decode.py [--rows 60] [--repeats 3]

Baseline: a loop that decodes the stored 224x224 JPEG bytes of the same samples with PIL, nothing else.
Ours: `PackedRows.row()` for the same rows (read, CRC check, decode, patchify, tokens and segment table).
The ratio says how close the loader is to the decode limit (1.0 = no overhead).
"""

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
from common import make_raw, make_shards, median_time
from PIL import Image

from genlip.data.loader import LoaderSpec, PackedRows
from genlip.data.packing import PackingSpec
from genlip.data.shards import read_sample


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tars, tok = make_raw(root, samples=1000, per_shard=250, size=224)
        ds_root = make_shards(root, tars, tok)
        rows = PackedRows(LoaderSpec(datasets=[str(ds_root)], packing=PackingSpec(budget=4096, max_samples_per_row=32),
                                     num_workers=0, check="none"))
        ds = rows.datasets[0]
        samples = [int(s) for r in range(args.rows) for s in rows.sources[0].samples(r)]
        jpegs = [bytes(read_sample(ds, s)[0]) for s in samples]

        def decode_only():
            for b in jpegs:
                np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))

        def ours():
            for r in range(args.rows):
                rows.row(r)

        base = median_time(decode_only, args.repeats)
        mine = median_time(ours, args.repeats)
        n = len(samples)
        print(f"bare JPEG decode: {n / base:8.1f} samples/s")
        print(f"our row loader:   {n / mine:8.1f} samples/s")
        print(f"ratio loader / decode-only: {base / mine:.2f} (1.0 = at the decode limit; median of {args.repeats})")


if __name__ == "__main__":
    main()
