"""The Python half of benchmarks/gpu_suite.sh: synthetic shards, genlip-train with two benchmark switches,
a report of the run's log against the memory planner, and a plain-PyTorch loop for machines where
DeepSpeed or megatron-core cannot be installed.

    python benchmarks/gpu_suite.py data ROOT [--samples 2400] [--size 256] [--workers 8]
    python benchmarks/gpu_suite.py train [--fused-adam] [--keep-checkpoint] CONFIG [key=value ...]
    python benchmarks/gpu_suite.py plain CONFIG [key=value ...]
    python benchmarks/gpu_suite.py report RUN_DIR [--warmup-steps 10]

`train` is `genlip-train` in this process with, unless asked otherwise, (1) torch's AdamW in DeepSpeed
(`torch_adam`; DeepSpeed's fused Adam would be JIT-compiled first, a minute or more, or fail without
nvcc/ninja) and (2) no end-of-run checkpoint and export (so16's optimizer state is ~10 GB to write).
`plain` trains the same model on the same loader with torch alone (fp32 weights, bf16 autocast, AdamW,
clipping, activation checkpointing) and writes the same metrics.jsonl. `report` prints the steady-state
medians: samples/s, tokens/s, TFLOP/s, MFU against the printed peak, peak memory against
genlip.cluster.plan's estimate, and the attention backend.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_raw, make_shards  # noqa: E402  (puts the repository on sys.path)


def cmd_data(args) -> int:
    t0 = time.time()
    root = Path(args.root)
    tars, tok = make_raw(root, samples=args.samples, per_shard=max(args.samples // args.workers, 1), size=args.size)
    ds = make_shards(root, tars, tok, workers=args.workers)
    print(f"synthetic dataset {ds}: {args.samples} samples of {args.size} px in {time.time() - t0:.0f} s")
    return 0


def cmd_train(args) -> int:
    from genlip.train import trainer
    from genlip.train.cli import main

    if not args.fused_adam:
        build = trainer.build_ds_config

        def torch_adam(cfg, *, dp):
            ds = build(cfg, dp=dp)
            ds["optimizer"]["params"]["torch_adam"] = True
            return ds

        trainer.build_ds_config = torch_adam
    if not args.keep_checkpoint:
        def no_save(self) -> bool:
            self._read_losses(reset=False)
            self.log.print("gpu_suite: end-of-run checkpoint skipped (--keep-checkpoint keeps it)")
            return True

        trainer.Trainer._save = no_save
        trainer.Trainer.export = lambda self: None
    return main(args.rest)


def cmd_plain(args) -> int:
    """The fallback: the same model, loader and optimizer settings in plain PyTorch on one device."""
    import torch

    from genlip.config import load_config
    from genlip.data.loader import LoaderSpec, build_loader
    from genlip.data.packing import PackingSpec
    from genlip.model import build_model
    from genlip.train.metrics import batch_stats, memory_gib, peak_tflops
    from genlip.train.preflight import check_run

    cfg = load_config(args.rest[0], args.rest[1:])
    m, _ = check_run(cfg, world_size=1)
    d, t, o = cfg.data, cfg.train, cfg.optim
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    run = Path(t.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(json.dumps(cfg.to_dict(), indent=1))
    model = build_model(m, seed=t.seed, device=device)
    model.activation_checkpointing = t.activation_checkpointing
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=cuda)
    spec = LoaderSpec(datasets=list(d.datasets), packing=PackingSpec(budget=d.seq_len,
                      max_samples_per_row=d.max_samples_per_row, seed=d.seed), global_rows=t.global_batch_rows,
                      micro_rows=t.micro_batch_rows, num_workers=d.num_workers, check="none")
    it = iter(build_loader(spec, pin_memory=cuda))
    accum = t.global_batch_rows // t.micro_batch_rows
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.dtype == "bf16")
    peak = peak_tflops()
    total = {"samples": 0, "tokens": 0}
    window = dict.fromkeys(("steps", "samples", "tokens", "flops"), 0.0)
    with open(run / "metrics.jsonl", "w") as log:
        t_window = time.perf_counter()
        for step in range(1, t.max_steps + 1):
            for _ in range(accum):
                batch, _ = next(it)
                s, tk, f = batch_stats(batch.segments, m)
                window["samples"] += s
                window["tokens"] += tk
                window["flops"] += f
                batch = type(batch)(batch.pixels.to(device, non_blocking=True),
                                    batch.tokens.to(device, non_blocking=True), batch.segments)
                with amp:
                    loss = model(batch).loss / accum
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            window["steps"] += 1
            if step % t.log_interval == 0 or step == 1 or step == t.max_steps:
                if cuda:
                    torch.cuda.synchronize()
                now = time.perf_counter()
                dt = now - t_window
                total["samples"] += int(window["samples"])
                total["tokens"] += int(window["tokens"])
                tflops = window["flops"] / dt / 1e12
                rec = {"step": step, "samples": total["samples"], "train/loss": loss.item() * accum,
                       "perf/samples_per_s": window["samples"] / dt, "perf/tokens_per_s": window["tokens"] / dt,
                       "perf/step_time": dt / window["steps"], "perf/tflops_per_device": tflops,
                       "perf/mfu": tflops / peak if peak else None, "perf/memory_gib": memory_gib()}
                log.write(json.dumps(rec) + "\n")
                print(f"plain step {step} | loss {rec['train/loss']:.4f} | {rec['perf/samples_per_s']:.1f} samples/s | "
                      f"{tflops:.1f} TFLOP/s | mem {rec['perf/memory_gib']:.1f} GiB", flush=True)
                window = dict.fromkeys(window, 0.0)
                t_window = time.perf_counter()
    (run / "result.json").write_text(json.dumps({"status": "done", "samples": total["samples"],
                                                 "tokens": total["tokens"], "trainer": "plain"}) + "\n")
    return 0


def cmd_report(args) -> int:
    import torch

    from genlip.cluster.plan import estimate
    from genlip.config import load_config
    from genlip.model.attention import resolve_backend
    from genlip.train.metrics import PEAK_BF16_TFLOPS, peak_tflops
    from genlip.train.preflight import check_run

    run = Path(args.run)
    cfg = load_config(run / "config.yaml")  # JSON, which YAML reads
    m, _ = check_run(cfg, world_size=args.world)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steady = [r for r in recs if "perf/step_time" in r and r["step"] > args.warmup_steps]
    if not steady:
        print(f"report: no log records after step {args.warmup_steps} in {run / 'metrics.jsonl'}")
        return 1
    result = json.loads((run / "result.json").read_text()) if (run / "result.json").is_file() else {}
    med = {k: statistics.median(r[k] for r in steady) for k in
           ("perf/samples_per_s", "perf/tokens_per_s", "perf/tflops_per_device", "perf/step_time")}
    mem = max(r["perf/memory_gib"] for r in recs if "perf/memory_gib" in r)
    tokens_per_sample = (result["tokens"] / result["samples"] if result.get("samples")
                         else med["perf/tokens_per_s"] / med["perf/samples_per_s"])
    plan = estimate(cfg, m, world=args.world, avg_tokens_per_sample=tokens_per_sample)
    peak = peak_tflops()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    backend = resolve_backend(m.attn_backend, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    t = cfg.train
    how = ("plain PyTorch, fp32 weights, bf16 autocast" if result.get("trainer") == "plain"
           else f"genlip-train, {t.dtype}, ZeRO-{cfg.parallel.zero_stage}")
    print(f"== {cfg.model.preset} training ({how}, {args.world} x {device}, activation checkpointing "
          f"{'on' if t.activation_checkpointing else 'off'}, rows of {cfg.data.seq_len} slots, "
          f"{t.global_batch_rows} rows/step); medians over "
          f"{len(steady)} log windows after step {args.warmup_steps}")
    print(f"  attention backend   {backend}")
    print(f"  step time           {med['perf/step_time'] * 1e3:.1f} ms")
    print(f"  samples/s           {med['perf/samples_per_s']:.1f}  ({tokens_per_sample:.0f} tokens per sample)")
    print(f"  tokens/s            {med['perf/tokens_per_s']:.0f}")
    print(f"  TFLOP/s per device  {med['perf/tflops_per_device']:.1f}  (matmul FLOPs of forward+backward; "
          "activation recompute not counted)")
    if peak:
        print(f"  MFU                 {100 * med['perf/tflops_per_device'] / peak:.1f}% of {peak:.0f} TFLOP/s "
              "(dense bf16 peak, genlip.train.metrics)")
    else:
        print(f"  MFU                 n/a: no peak known for {device} (table: {', '.join(PEAK_BF16_TFLOPS)})")
    parts = ", ".join(f"{k} {v:.1f}" for k, v in plan.memory_gib.items())
    print(f"  peak memory         {mem:.1f} GiB ({'torch max allocated' if torch.cuda.is_available() else 'peak RSS'})"
          f" vs planner {plan.total_gib:.1f} GiB ({parts}): measured/planned {mem / plan.total_gib:.2f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("data", help="synthetic raw shards, a tokenizer and a built dataset under ROOT/ds")
    p.add_argument("root")
    p.add_argument("--samples", type=int, default=2400)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--workers", type=int, default=8)
    p = sub.add_parser("train", help="genlip-train in this process (torch AdamW, no final checkpoint)")
    p.add_argument("--fused-adam", action="store_true", help="DeepSpeed's fused Adam (JIT-compiled on first use)")
    p.add_argument("--keep-checkpoint", action="store_true", help="write the end-of-run checkpoint and export")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="CONFIG key=value ...")
    p = sub.add_parser("plain", help="the plain-PyTorch fallback loop")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="CONFIG key=value ...")
    p = sub.add_parser("report", help="steady-state figures of a run against the memory planner")
    p.add_argument("run")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--world", type=int, default=1)
    args = ap.parse_args(argv)
    return {"data": cmd_data, "train": cmd_train, "plain": cmd_plain, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
