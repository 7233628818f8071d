"""genlip-data: offline data tools (tokenizer, build, pack, verify, inspect)."""

from __future__ import annotations

import argparse
import sys

from data_tools import build, inspect_data, pack, tokenizer, verify
from genlip.data.shards import DatasetError
from genlip.data.sources import InputError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="genlip-data", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (tokenizer, build, pack, verify, inspect_data):
        module.add_parser(sub)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (InputError, DatasetError, FileNotFoundError, ValueError) as e:
        print(f"genlip-data {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"genlip-data {args.command}: interrupted; rerun the same command to finish", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
