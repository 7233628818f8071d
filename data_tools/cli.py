"""genlip-data: offline data tools (tokenizer, build, pack, verify, inspect)."""

from __future__ import annotations

import argparse
import sys

from data_tools import build, inspect_data, pack, tokenizer, verify
from genlip.errors import cli_main


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="genlip-data", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (tokenizer, build, pack, verify, inspect_data):
        module.add_parser(sub)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return cli_main(f"genlip-data {args.command}", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
