"""GPU check: flash-attn varlen and FlexAttention against SDPA, and so16 forward+backward speed.

Run on a CUDA machine (needs flash-attn for the flash rows; FlexAttention comes with torch):

    python benchmarks/gpu_attention_check.py [--preset so16] [--seq-len 16384] [--iters 5]

1. Correctness: a small model (fp32 and bf16) on a packed batch with mixed grids; max |diff| of the
   final hidden states of each backend against SDPA with the dense mask.
2. Speed: `--preset` in bf16 on one packed row of `--seq-len` slots filled with stage-1 samples
   (14x14 patches, 6 prompt, 68 caption tokens), forward+backward per backend; median time, tokens/s,
   achieved TFLOP/s (matmul FLOPs from genlip.info) and the ratio to SDPA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genlip.info import train_flops_per_sample  # noqa: E402
from genlip.model import PackedBatch, build_model, get_preset  # noqa: E402
from genlip.model.attention import _flash_varlen  # noqa: E402


def stage1_row(cfg, seq_len, device, grid=14, prompt=6, caption=68):
    n = grid * grid + prompt + caption
    k = seq_len // n
    segments = torch.tensor([[[grid, grid, prompt, caption]] * k], dtype=torch.int32, device=device)
    tokens = torch.randint(1, cfg.vocab_size, (1, seq_len), device=device)
    pixels = torch.randn(k * grid * grid, cfg.patch_dim, device=device)
    return PackedBatch(pixels, tokens, segments), k


def mixed_batch(cfg, device):
    segments = torch.tensor([[[2, 3, 2, 4], [14, 14, 6, 30], [10, 22, 0, 12]],
                             [[16, 8, 6, 50], [3, 3, 1, 2], [0, 0, 0, 0]]], dtype=torch.int32, device=device)
    seq_len = 512
    n = int((segments[..., 0] * segments[..., 1]).sum())
    return PackedBatch(torch.randn(n, cfg.patch_dim, device=device),
                       torch.randint(1, cfg.vocab_size, (2, seq_len), device=device), segments)


def check_backends(backends, device):
    print("== correctness against sdpa (final hidden states at real slots, max |diff|)")
    for dtype in (torch.float32, torch.bfloat16):
        cfg = get_preset("small", attn_backend="sdpa")
        batch = mixed_batch(cfg, device)
        ref = build_model(cfg, seed=0, device=device, dtype=dtype).eval()
        with torch.no_grad():
            h_ref, layout = ref.hidden(batch.to(device, dtype))
        real = layout.real_index
        for name in backends:
            model = build_model(get_preset("small", attn_backend=name), seed=0, device=device, dtype=dtype).eval()
            with torch.no_grad():
                h, _ = model.hidden(batch.to(device, dtype))
            diff = (h.flatten(0, 1)[real].float() - h_ref.flatten(0, 1)[real].float()).abs().max().item()
            print(f"  {name:<6} {str(dtype):<15} max|diff| {diff:.3e}")


def time_backends(backends, preset, seq_len, iters, device):
    print(f"== {preset} bf16 forward+backward on one packed row of {seq_len} slots")
    results = {}
    for name in backends:
        cfg = get_preset(preset, attn_backend=name)
        model = build_model(cfg, seed=0, device=device, dtype=torch.bfloat16)
        model.train()
        batch, k = stage1_row(cfg, seq_len, device)
        batch = batch.to(device, torch.bfloat16)
        flops = k * train_flops_per_sample(cfg, patches=196, prompt_tokens=6, caption_tokens=68)
        times = []
        try:
            for i in range(iters + 2):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(batch).loss.backward()
                torch.cuda.synchronize()
                if i >= 2:
                    times.append(time.perf_counter() - t0)
                model.zero_grad(set_to_none=True)
        except torch.OutOfMemoryError:
            print(f"  {name:<6} out of memory")
            continue
        med = statistics.median(times)
        results[name] = med
        mem = torch.cuda.max_memory_allocated() / 2**30
        print(f"  {name:<6} median {med * 1e3:8.1f} ms  {seq_len / med:9.0f} tok/s  {k} samples  "
              f"{flops / med / 1e12:6.1f} TFLOP/s  peak mem {mem:.1f} GiB")
        torch.cuda.reset_peak_memory_stats()
        del model
        torch.cuda.empty_cache()
    if "sdpa" in results:
        for name, t in results.items():
            print(f"  speed-up of {name} over sdpa: {results['sdpa'] / t:.2f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="so16")
    ap.add_argument("--seq-len", type=int, default=16384)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 2
    device = torch.device("cuda")
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"flash-attn {'yes' if _flash_varlen() is not None else 'no'}")
    backends = ["flex"] + (["flash"] if _flash_varlen() is not None else [])
    check_backends(backends, device)
    time_backends(["sdpa"] + backends, args.preset, args.seq_len, args.iters, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
