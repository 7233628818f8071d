"""genlip-export: any checkpoint or model -> one consolidated file set (ours or the authors' layout).

    genlip-export runs/so16_stage1 --out exports/so16                 # newest checkpoint (or final export)
    genlip-export runs/so16_stage1/checkpoints/step000004000 --out exports/so16_4k
    genlip-export runs/so16_stage1 --step 4000 --format official --dtype bf16 --out hf/so16
    genlip-export runs/so16_stage1 --trunk-only --format official --out hf/so16_encoder   # deployment
    genlip-export hf/GenLIP-so16 --out exports/so16_from_hf          # authors' layout -> ours

Sources: a run directory, its checkpoints/ directory, one step directory (any tp/pp/dp/ZeRO layout; read
offline, no processes or GPUs), a project export, or a directory in the authors' Hugging Face layout.
Formats: `genlip` writes model.safetensors (single-process names) + model.json; `official` writes the
authors' config.json + model.safetensors (q/gate fused as theirs, gate_fc/fc1 split). `--trunk-only` keeps
the patch embedding, the blocks and the final LayerNorm (what an MLLM consumes). The training tokenizer
is copied beside the weights when known. Nothing is written until the weights are read and checked;
an existing output is only replaced with --overwrite.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from genlip.errors import UserError, cli_main

DTYPES = ("bf16", "fp32")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="genlip-export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="run dir, checkpoints dir, step dir, export, or authors'-layout dir")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--step", type=int, help="with a run or checkpoints dir: the checkpoint of this step")
    ap.add_argument("--format", choices=["genlip", "official"], default="genlip",
                    help="genlip: model.safetensors + model.json; official: the authors' Hugging Face layout")
    ap.add_argument("--dtype", choices=DTYPES, default=None,
                    help="tensor dtype (default: fp32 for genlip, bf16 for official, as the released weights)")
    ap.add_argument("--trunk-only", action="store_true", help="keep only the vision encoder (patch embedding, "
                    "blocks, final LayerNorm)")
    ap.add_argument("--overwrite", action="store_true", help="replace files in an existing --out")
    return ap


def _resolve(source: Path, step: int | None) -> Path:
    from genlip.weights.deepspeed_files import find_checkpoint

    if step is None:
        return source
    ckpt_dir = source / "checkpoints" if (source / "checkpoints").is_dir() else source
    path = ckpt_dir / f"step{step:09d}"
    if not path.is_dir():
        have = sorted(p.name for p in ckpt_dir.glob("step*")) if ckpt_dir.is_dir() else []
        raise UserError(f"no checkpoint for step {step} in {ckpt_dir} (there: {', '.join(have) or 'none'})")
    return find_checkpoint(path).path


def _export(args) -> int:
    import torch

    from genlip.weights.load import load_state
    from genlip.weights.model_file import save_model
    from genlip.weights.official import TRUNK_PREFIXES, save_official

    dtype = torch.bfloat16 if (args.dtype or ("bf16" if args.format == "official" else "fp32")) == "bf16" else torch.float32
    out = args.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} exists and is not empty; pass --overwrite or choose another --out")
    state, cfg, tokenizer, source = load_state(_resolve(args.source, args.step))
    print(f"read {source}: {sum(v.numel() for v in state.values()):,} parameters")
    if args.trunk_only:
        state = {k: v for k, v in state.items() if k.startswith(TRUNK_PREFIXES)}
    if args.format == "official":
        path = save_official(out, state, cfg, dtype=dtype, trunk_only=args.trunk_only)
        if tokenizer is not None:
            shutil.copyfile(tokenizer, out / ("tokenizer" + tokenizer.suffix))
    else:
        path = save_model(out / "model.safetensors", {k: v.to(dtype) for k, v in state.items()}, cfg,
                          {"source": source, "trunk_only": args.trunk_only, "dtype": str(dtype)}, tokenizer=tokenizer)
    print(f"tokenizer: {'copied from ' + str(tokenizer) if tokenizer else 'none found beside the weights or in the run dataset; give genlip-eval --tokenizer'}")
    print(f"wrote {path} ({args.format} layout, {str(dtype).removeprefix('torch.')}"
          f"{', vision encoder only' if args.trunk_only else ''}; {sum(v.numel() for v in state.values()):,} parameters)")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return cli_main("genlip-export", lambda: _export(args))


if __name__ == "__main__":
    sys.exit(main())
