"""The `genlip-train` command: parse, load and check the run config, then start the trainer.

Arguments, the config and the datasets are checked before torch and DeepSpeed load, so `--help`, a
typo in a key or a missing dataset answer in about a second, with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from genlip.config import field_help, load_config
from genlip.errors import EXIT_USAGE, cli_main

HELP = """genlip-train: train GenLIP from a YAML run config on 1 CPU process or many GPUs.

    genlip-train CONFIG.yaml [key=value ...]           # one process
    torchrun --nproc_per_node 8 -m genlip.train.trainer CONFIG.yaml parallel.tp=2
    deepspeed --num_gpus 8 --module genlip.train.trainer CONFIG.yaml
    srun python -m genlip.train.trainer CONFIG.yaml    # ranks from SLURM variables

TP from megatron-core, PP from DeepSpeed's pipeline engine, DP with DeepSpeed ZeRO. The schedule and
the logs count samples. Checkpoints every `train.save_interval` steps; the run resumes from the newest
complete checkpoint in `train.output_dir` by itself. SIGTERM / SIGUSR1 or `train.time_limit_minutes`
checkpoint and exit with code 75 (requeue); too many non-finite steps in a row checkpoint and exit 3;
a checkpoint that cannot be written exits 74; a config or data mistake exits 2 before anything starts.
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="genlip-train", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", help="YAML run config (run_scripts/configs/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 parallel.tp=2")
    ap.add_argument("--help-config", action="store_true", help="list every config key with its default and meaning")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config (JSON) and exit")
    ap.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    return ap


def _run(args) -> int:
    if args.help_config:
        print(field_help())
        return 0
    if not args.config:
        build_parser().print_usage(sys.stderr)
        print("genlip-train: error: give a run config (e.g. run_scripts/configs/tiny.yaml)", file=sys.stderr)
        return EXIT_USAGE
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    from genlip.train.preflight import check_run, world_size_from_env

    check_run(cfg, world_size=world_size_from_env())
    # DeepSpeed logs to stdout, from its first import on; its notices belong on stderr with other warnings.
    with contextlib.redirect_stdout(sys.stderr):
        from genlip.train import trainer
    return trainer.train(cfg)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return cli_main("genlip-train", lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
