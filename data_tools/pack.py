"""genlip-data pack: build the packing plan of a dataset for some epochs and print the fill rate.

The plan is a pure function of (dataset, seed, epoch, token budget, max samples per row); it is stored
next to the data (DATASET/packing/) and memory-mapped at training time. Training builds a missing
epoch itself (rank 0 builds epoch 0 at start-up while the others wait; a later epoch is built by the
first process of each node to need it, while its loader waits), so for large datasets build every epoch
the run will reach here, ahead of time. Building one epoch of a billion samples holds about 8 GB (4
bytes per sample for the lengths and for the order) and takes minutes (benchmarks/data_scale.py);
epochs are independent, so build them in parallel, on one node (--num-workers, 8 GB each) or as a
SLURM array, one epoch per task:

    sbatch --array=0-9 --mem=16G --wrap 'genlip-data pack DATASET --first-epoch $SLURM_ARRAY_TASK_ID --epochs 1 --check none'

(check the dataset once beforehand with `genlip-data verify`). Tasks of one plan may run at once: each
writes its own epoch's files under temporary names and renames them into place.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from pathlib import Path

from genlip.data.packing import PackingSpec
from genlip.data.shards import open_dataset
from genlip.errors import UserError


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
    ap.add_argument("--epochs", type=int, default=1, help="how many epochs to build, from --first-epoch on")
    ap.add_argument("--first-epoch", type=int, default=0,
                    help="first epoch to build (a SLURM array task: $SLURM_ARRAY_TASK_ID with --epochs 1)")
    ap.add_argument("--window", type=int, default=16384, help="samples packed together")
    ap.add_argument("--num-workers", type=int, default=1, help="epochs built in parallel (about 8 bytes of "
                    "memory per sample each)")
    ap.add_argument("--check", choices=("quick", "none"), default="quick",
                    help="dataset check first: quick (file sizes, sha256 of the index files: minutes for a "
                    "billion samples) or none (array tasks, once it has been verified)")
    ap.set_defaults(run=run)


def run(args) -> int:
    spec = PackingSpec(budget=args.budget, max_samples_per_row=args.max_samples_per_row, seed=args.seed,
                       window=args.window)
    if args.first_epoch < 0 or args.epochs < 1:
        raise UserError(f"genlip-data pack: --first-epoch {args.first_epoch} --epochs {args.epochs}: need a "
                         "first epoch >= 0 and at least one epoch")
    open_dataset(args.dataset, check=args.check)
    jobs = [(args.dataset, spec, e) for e in range(args.first_epoch, args.first_epoch + args.epochs)]
    with mp.get_context("fork").Pool(max(1, min(args.num_workers, len(jobs)))) as pool:
        for epoch, rows, fill in pool.imap(_build, jobs):
            print(f"epoch {epoch}: {rows} rows of {spec.budget} slots, fill rate {100 * fill:.2f}%")
    print(f"plan stored in {args.dataset / 'packing' / spec.name}")
    return 0
