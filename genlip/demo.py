"""genlip-demo: the main job on a small embedded default.

For now: build a small GenLIP, pack a row of synthetic samples with mixed patch grids, run one
forward/backward and an optimizer step, then decode a greedy caption from the (random) weights with the
KV cache, printing shapes and parameter counts along the way. Needs no data and no network.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from genlip.info import count_params
from genlip.model import PackedBatch, build_model, get_preset, greedy_caption, make_layout


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="genlip-demo", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--preset", default="small", help="model preset")
    ap.add_argument("--seq-len", type=int, default=640, help="token slots per packed row")
    ap.add_argument("--seed", type=int, default=0, help="init and data seed")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    cfg = get_preset(args.preset)
    counts = count_params(cfg)
    print(f"model {args.preset}: {cfg.num_layers} layers, width {cfg.width}, {cfg.heads} heads, "
          f"params {counts.total:,} (trunk {counts.trunk:,}, text {counts.text:,})")
    model = build_model(cfg, seed=args.seed)

    # One packed row: a 14x14 image (stage 1), a 10x22 native-aspect image and a 16x8 one.
    segments = torch.tensor([[[14, 14, 6, 20], [10, 22, 6, 30], [16, 8, 0, 12]]], dtype=torch.int32)
    n_img = int((segments[..., 0] * segments[..., 1]).sum())
    tokens = torch.randint(1, cfg.vocab_size, (1, args.seq_len))
    batch = PackedBatch(torch.rand(n_img, cfg.patch_dim) * 2 - 1, tokens, segments)
    layout = make_layout(batch.segments, args.seq_len)
    print(f"packed row: {args.seq_len} slots, {n_img} patches, {len(layout.text_index)} text, "
          f"{args.seq_len - len(layout.real_index)} padding, {len(layout.target_index)} loss targets; "
          f"pixels {tuple(batch.pixels.shape)}")

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    t0 = time.perf_counter()
    out = model(batch)
    out.loss.backward()
    opt.step()
    print(f"forward+backward+step: loss {out.loss.item():.4f} (ln V = {torch.log(torch.tensor(cfg.vocab_size)):.4f}) "
          f"in {time.perf_counter() - t0:.2f}s")

    feats = model.features(batch)
    print(f"patch features (final LN): {tuple(feats.shape)}")
    pixels = batch.pixels[: 14 * 14].unsqueeze(0)
    caption = greedy_caption(model, pixels, (14, 14), prompt=tokens[0, :6].tolist(), max_new_tokens=12)
    print(f"greedy caption from random weights (token ids): {caption[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
