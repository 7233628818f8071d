"""Preprocessing throughput: samples/s of `genlip-data build` with 1 and with 2 worker processes.

    python benchmarks/preprocess_throughput.py [--samples 1200] [--repeats 3]

Input: rendered 320x320 JPEG scenes in img2dataset-layout tars; output: stage-1 shards (224 px JPEG).
Prints the median samples/s per configuration, per process, and the 2-vs-1 scaling.
"""

import argparse
import shutil
import tempfile
from pathlib import Path

from common import make_raw, median_time

from data_tools.build import BuildOptions, build
from genlip.data.images import ImageMode


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tars, tok = make_raw(root, samples=args.samples, per_shard=args.samples // 4)
        rates = {}
        for workers in (1, 2):
            def run():
                out = root / f"out{workers}"
                shutil.rmtree(out, ignore_errors=True)
                build(tars, out, tok, BuildOptions(image=ImageMode()), num_workers=workers, quiet=True)
            t = median_time(run, args.repeats)
            rates[workers] = args.samples / t
            print(f"workers={workers}: {rates[workers]:8.1f} samples/s  ({rates[workers] / workers:.1f} per process, "
                  f"median of {args.repeats})")
        print(f"scaling 1 -> 2 processes: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
