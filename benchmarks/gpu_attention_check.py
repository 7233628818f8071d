"""GPU check: flash-attn varlen and FlexAttention against SDPA, and so16 forward+backward speed.

Run on a CUDA machine (needs flash-attn for the flash rows; FlexAttention comes with torch):

    python benchmarks/gpu_attention_check.py [--preset so16] [--seq-len 16384] [--iters 5]
    python benchmarks/gpu_attention_check.py --cpu-smoke     # the same code, tiny sizes, on CPU

1. Correctness: a small model (fp32 and bf16) on a packed batch with mixed grids, each backend against
   SDPA with the dense mask (the oracle): forward, max |diff| of the final hidden states at real slots;
   backward, the largest |diff| of any parameter's gradient of the loss, relative to that gradient's
   largest entry. A line ends in FAIL past the tolerance (fp32 1e-3 / 1e-3, bf16 0.15 / 0.15).
2. Speed: `--preset` in bf16 on one packed row of `--seq-len` slots filled with stage-1 samples
   (14x14 patches, 6 prompt, 68 caption tokens), forward+backward per backend; median time, tokens/s,
   achieved TFLOP/s (matmul FLOPs from genlip.info) and the ratio to SDPA.
Exit status 1 when a correctness line fails.
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
from genlip.model.attention import BACKENDS, _flash_varlen  # noqa: E402

ORACLE = "sdpa_dense" if "sdpa_dense" in BACKENDS else "sdpa"
# (forward abs, gradient relative); bf16: sdpa against the oracle on CPU differs by 3e-2 / 2e-2 already
TOLERANCE = {torch.float32: (1e-3, 1e-3), torch.bfloat16: (1.5e-1, 1.5e-1)}


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


def _forward_and_grads(name, dtype, batch, device):
    model = build_model(get_preset("small", attn_backend=name, drop_path=0.0), seed=0, device=device, dtype=dtype)
    model.eval()  # no dropout; gradients still flow
    with torch.no_grad():
        h, layout = model.hidden(batch)
    grads = None
    if device.type == "cuda" or name != "flex":  # flex on CPU runs eagerly and forward-only
        model.zero_grad(set_to_none=True)
        model(batch).loss.backward()
        grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    return h.flatten(0, 1)[layout.real_index].float(), grads


def check_backends(backends, device) -> bool:
    print(f"== correctness against {ORACLE} (small preset; forward: max |diff| of final hidden states at real "
          "slots; backward: max over parameters of max |grad diff| / max |grad|)")
    ok = True
    for dtype in (torch.float32, torch.bfloat16):
        batch = mixed_batch(get_preset("small"), device).to(device, dtype)
        h_ref, g_ref = _forward_and_grads(ORACLE, dtype, batch, device)
        tol_h, tol_g = TOLERANCE[dtype]
        for name in backends:
            h, g = _forward_and_grads(name, dtype, batch, device)
            diff = (h - h_ref).abs().max().item()
            line = f"  {name:<10} {str(dtype):<15} forward {diff:.3e}"
            good = diff <= tol_h
            if g is None:
                line += "  backward n/a (flex is forward-only on CPU)"
            else:
                rel = max(((g[n] - g_ref[n]).abs().max() / g_ref[n].abs().max().clamp_min(1e-12)).item() for n in g_ref)
                missing = sorted(set(g_ref) ^ set(g))
                line += f"  backward {rel:.3e}" + (f"  gradients missing: {missing}" if missing else "")
                good = good and rel <= tol_g and not missing
            print(line + ("" if good else "  FAIL"))
            ok = ok and good
    return ok


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
    ap.add_argument("--skip-speed", action="store_true", help="correctness only")
    ap.add_argument("--cpu-smoke", action="store_true", help="on CPU: correctness of sdpa and flex (forward) only")
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        return 0 if check_backends(["sdpa", "flex"], torch.device("cpu")) else 1
    if not torch.cuda.is_available():
        print("needs a CUDA device (or --cpu-smoke)")
        return 2
    device = torch.device("cuda")
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"flash-attn {'yes' if _flash_varlen() is not None else 'no'}")
    backends = ["flex"] + (["flash"] if _flash_varlen() is not None else [])
    ok = check_backends(["sdpa"] * (ORACLE != "sdpa") + backends, device)
    if not args.skip_speed:
        time_backends(["sdpa"] + backends, args.preset, args.seq_len, args.iters, device)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
