"""genlip-ckpt: inspect, verify and convert training checkpoints, offline (no processes, no GPU).

    genlip-ckpt inspect runs/so16_stage1                 # every checkpoint: step, samples, layout, state
    genlip-ckpt verify runs/so16_stage1                  # sizes and sha256 of every file (exit 1 if damaged)
    genlip-ckpt convert runs/so16_stage1 [--step N]      # universal state (layout-free weights + Adam moments)

A run resumed under another (tp, pp, dp, ZeRO) layout converts its checkpoint by itself (it logs "layout
changed"); `convert` does the same ahead of time, e.g. on a login node, into CHECKPOINT/universal/ or --out.
For the weights alone use genlip-export.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genlip.errors import UserError, cli_main

# The checkpoint code (torch) loads after the arguments are parsed: --help and usage errors answer at once.


def _ckpt_dir(path: Path) -> Path:
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def _layout(state: dict) -> str:
    lay = state.get("identity", {}).get("layout")
    if not lay:
        return "layout unknown"
    return f"tp {lay['tp']} x pp {lay['pp']} x dp {lay['dp']}, ZeRO-{lay['zero_stage']}"


def _check(step_dir: Path, hashes: bool) -> list[str]:
    from genlip.train.checkpoint import file_digest, hash_problems, read_state, size_problems
    from genlip.weights.deepspeed_files import STATE_FILE

    if not (step_dir / STATE_FILE).is_file():
        return ["incomplete (no genlip_state.json: the save was interrupted)"]
    state = read_state(step_dir)
    problems = size_problems(step_dir, state)
    if not problems and hashes and state.get("files"):
        got = {n: {"sha256": file_digest(step_dir / n)} for n in state["files"]}
        problems = hash_problems(step_dir, state["files"], got)
    if not problems and not state.get("files"):
        problems = ["no file list (written by an older version): cannot be verified"]
    return problems


def cmd_inspect(args, hashes: bool = False) -> int:
    from genlip.train.checkpoint import read_state, step_dirs
    from genlip.weights.deepspeed_files import STATE_FILE
    from genlip.weights.universal import UNIVERSAL_DIR

    ckpt_dir = _ckpt_dir(args.path)
    if not ckpt_dir.is_dir():
        raise UserError(f"{args.path} is not a directory; give a run directory or its checkpoints/ directory")
    dirs = step_dirs(ckpt_dir)
    if not dirs:
        raise UserError(f"no checkpoints in {ckpt_dir}")
    latest = (ckpt_dir / "latest").read_text().strip() if (ckpt_dir / "latest").is_file() else None
    bad = 0
    for d in dirs:
        problems = _check(d, hashes)
        state = read_state(d) if (d / STATE_FILE).is_file() else None
        what = ("sha256 verified" if hashes else "sizes ok") if not problems else "; ".join(problems[:3])
        bad += bool(problems) and state is not None
        if state is None:
            print(f"{d.name}  {what}")
            continue
        prog = state.get("progress", {})
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20
        extra = " [latest]" if d.name == latest else ""
        extra += " [universal]" if (d / UNIVERSAL_DIR / "universal.json").is_file() else ""
        print(f"{d.name}  step {prog.get('step')}  samples {prog.get('samples', 0):,}  {_layout(state)}  "
              f"{size:.1f} MiB  {what}{extra}")
    for d in sorted(ckpt_dir.glob("step*.damaged*")):
        print(f"{d.name}  set aside: a damaged checkpoint a resumed run did not overwrite")
    return 1 if bad else 0


def cmd_convert(args) -> int:
    from genlip.weights.deepspeed_files import find_checkpoint
    from genlip.weights.universal import save_universal

    path = args.path
    if args.step is not None:
        path = _ckpt_dir(path) / f"step{args.step:09d}"
    info = find_checkpoint(path)
    out = save_universal(info, args.out)
    print(f"universal state of {info.path} ({_layout(info.state)}) in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="genlip-ckpt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("inspect", "list checkpoints with step, layout, size and a size check"),
                        ("verify", "check sizes and sha256 of every checkpoint file; exit 1 if any is damaged")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("path", type=Path, help="run directory or its checkpoints/ directory")
    p = sub.add_parser("convert", help="write the universal (layout-free) state of a checkpoint")
    p.add_argument("path", type=Path, help="run directory, checkpoints/ directory or one step directory")
    p.add_argument("--step", type=int, help="the checkpoint of this step (default: the newest complete one)")
    p.add_argument("--out", type=Path, help="output directory (default: CHECKPOINT/universal)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "convert":
        return cli_main("genlip-ckpt convert", lambda: cmd_convert(args))
    return cli_main(f"genlip-ckpt {args.cmd}", lambda: cmd_inspect(args, hashes=args.cmd == "verify"))


if __name__ == "__main__":
    sys.exit(main())
