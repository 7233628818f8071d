"""genlip-data pack: build the packing plan of a dataset for some epochs and print the fill rate.

The plan is a pure function of (dataset, seed, epoch, token budget, max samples per row); it is stored
next to the data (DATASET/packing/) and memory-mapped at training time. Training builds a missing
epoch itself, but for large datasets build them here ahead of time (several epochs in parallel).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from pathlib import Path

from genlip.data.packing import PackingSpec
from genlip.data.shards import open_dataset


def _build(args):
    from genlip.data.loader import RowSource  # imports torch: not at `genlip-data --help` time

    root, spec, epoch = args
    source = RowSource(open_dataset(root, check="none"), spec)
    fill = source.plan.build(epoch)
    return epoch, source.plan.rows_in_epoch(epoch), fill


def add_parser(sub) -> None:
    ap = sub.add_parser("pack", help="packing plan for (dataset, seed, epochs, budget); prints the fill rate",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="dataset directory")
    ap.add_argument("--budget", type=int, default=16384, help="token slots per row (the training sequence length)")
    ap.add_argument("--max-samples-per-row", type=int, default=128, help="most samples per row")
    ap.add_argument("--seed", type=int, default=0, help="order seed")
    ap.add_argument("--epochs", type=int, default=1, help="build epochs 0..N-1")
    ap.add_argument("--window", type=int, default=16384, help="samples packed together")
    ap.add_argument("--num-workers", type=int, default=1, help="epochs built in parallel")
    ap.set_defaults(run=run)


def run(args) -> int:
    spec = PackingSpec(budget=args.budget, max_samples_per_row=args.max_samples_per_row, seed=args.seed,
                       window=args.window)
    open_dataset(args.dataset, check="quick")
    jobs = [(args.dataset, spec, e) for e in range(args.epochs)]
    with mp.get_context("fork").Pool(max(1, min(args.num_workers, len(jobs)))) as pool:
        for epoch, rows, fill in pool.imap(_build, jobs):
            print(f"epoch {epoch}: {rows} rows of {spec.budget} slots, fill rate {100 * fill:.2f}%")
    print(f"plan stored in {args.dataset / 'packing' / spec.name}")
    return 0
