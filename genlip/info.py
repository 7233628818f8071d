"""genlip-info: parameter counts and training FLOPs of a model preset.

Counts are closed-form from the config (and tested against a model built on the meta device).
"Trunk" is what is kept at deployment: patch embedding, blocks and the final LayerNorm; "text" is the
token embedding, in/out projections and the LM head, dropped after pre-training.

FLOPs count matmuls only (2 per multiply-add); training = 3 x forward (no recompute). Attention
counts exactly the (query, key) pairs the prefix-LM mask allows, and the LM head runs only at targets.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

from genlip.model.config import PRESETS, ModelConfig, get_preset

# Dense bf16 peak TFLOP/s per device (vendor figures, no sparsity); MFU and the sweep's GPU-hours read it.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                    "A10": 125.0, "V100": 125.0, "B200": 2250.0, "GB200": 2500.0, "MI300X": 1307.0}


@dataclass
class ParamCounts:
    trunk: int
    text: int

    @property
    def total(self) -> int:
        return self.trunk + self.text


def count_params(cfg: ModelConfig) -> ParamCounts:
    D, E, F, V = cfg.width, cfg.text_width, cfg.ffn, cfg.vocab_size
    block = (2 * D) * 2 + (2 * D * D + 2 * D) + 3 * (D * D + D) + 2 * D + (2 * F * D + 2 * F) + (F * D + D)
    trunk = (cfg.patch_dim * D + D) + cfg.num_layers * block + 2 * D
    text = V * E + E * V + ((E * D + D) + (D * E + E) if E != D else 0)
    return ParamCounts(trunk=trunk, text=text)


def train_flops_per_sample(cfg: ModelConfig, *, patches: int, prompt_tokens: int, caption_tokens: int) -> float:
    """Matmul FLOPs of one forward+backward over one sample (image, prompt, caption + end)."""
    D, E, F, V = cfg.width, cfg.text_width, cfg.ffn, cfg.vocab_size
    P, T = patches, prompt_tokens + caption_tokens
    fwd = 2 * P * cfg.patch_dim * D
    fwd += 2 * T * E * D if E != D else 0
    fwd += cfg.num_layers * (P + T) * 2 * (5 * D * D + 3 * D * F)
    pairs = P * P + T * P + T * (T + 1) // 2
    fwd += cfg.num_layers * 4 * D * pairs
    fwd += caption_tokens * 2 * (E * V + (D * E if E != D else 0))
    return 3.0 * fwd


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def describe(name: str, *, image_size: int, prompt_tokens: int, caption_tokens: int) -> dict:
    cfg = get_preset(name)
    counts = count_params(cfg)
    patches = (image_size // cfg.patch_size) ** 2
    flops = train_flops_per_sample(cfg, patches=patches, prompt_tokens=prompt_tokens, caption_tokens=caption_tokens)
    return {"preset": name, "config": asdict(cfg), "params_total": counts.total, "params_trunk": counts.trunk,
            "params_text": counts.text, "patches": patches, "prompt_tokens": prompt_tokens,
            "caption_tokens": caption_tokens, "train_flops_per_sample": flops}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="genlip-info", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("presets", nargs="*", help=f"model presets ({', '.join(PRESETS)}); default: all")
    ap.add_argument("--image-size", type=int, default=224, help="square image side in pixels")
    ap.add_argument("--prompt-tokens", type=int, default=6, help="prompt length (stage-1 instruction ~6)")
    ap.add_argument("--caption-tokens", type=int, default=68,
                    help="caption + end tokens per sample (stage 1 averages ~270 tokens in all)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = args.presets or list(PRESETS)
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        print(f"genlip-info: unknown preset(s) {unknown}; choose from {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    rows = [describe(n, image_size=args.image_size, prompt_tokens=args.prompt_tokens,
                     caption_tokens=args.caption_tokens) for n in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"per sample: {rows[0]['patches']} patches ({args.image_size}px), {args.prompt_tokens} prompt, "
          f"{args.caption_tokens} caption+end tokens")
    print(f"{'preset':<10} {'layers':>6} {'width':>5} {'heads':>5} {'ffn':>5} {'trunk':>8} {'text':>8} "
          f"{'total':>8} {'train FLOPs/sample':>19}")
    for r in rows:
        c = r["config"]
        print(f"{r['preset']:<10} {c['num_layers']:>6} {c['width']:>5} {c['heads']:>5} {c['ffn']:>5} "
              f"{_human(r['params_trunk']):>8} {_human(r['params_text']):>8} {_human(r['params_total']):>8} "
              f"{_human(r['train_flops_per_sample']):>19}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
