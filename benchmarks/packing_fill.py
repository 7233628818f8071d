"""Packing efficiency: fill rate of our packing plan against padding each sample to the longest in its batch.

    python benchmarks/packing_fill.py [--samples 200000] [--batch 60]

Stage-1-like lengths (196 patches + 6 prompt + ~68 +- 25 caption tokens) and stage-2-like lengths (16..1024
patches + ~200 caption tokens). Baseline: batches of `--batch` samples in the same random order, each
padded to the longest sample in its batch. Ours: rows of 16384 slots from `pack_epoch`.
"""

import argparse

import common  # noqa: F401  (puts the repository on sys.path)
import numpy as np

from genlip.data.packing import PackingSpec, fill_rate, pack_epoch


def pad_to_longest(lengths, batch, seed=0):
    order = np.random.default_rng(seed).permutation(len(lengths))
    L = lengths[order][: len(lengths) // batch * batch].reshape(-1, batch)
    return L.sum() / (L.max(1) * batch).sum()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=60)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    cases = {
        "stage 1": 202 + np.clip(rng.normal(68, 25, args.samples), 5, 400).astype(np.int64),
        "stage 2": rng.integers(16, 1025, args.samples) + 6 + np.clip(rng.normal(200, 80, args.samples), 10, 800).astype(np.int64),
    }
    for name, lengths in cases.items():
        offsets, _ = pack_epoch(lengths, PackingSpec(), 0)
        ours, base = fill_rate(lengths, offsets, 16384), pad_to_longest(lengths, args.batch)
        print(f"{name}: pad-to-longest (batch {args.batch}) {100 * base:.2f}%  packed rows {100 * ours:.2f}%  "
              f"ratio {ours / base:.2f}x")


if __name__ == "__main__":
    main()
