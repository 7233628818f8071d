"""Trainer overhead: tokens/s of `genlip-train` (1 process, TP=1, ZeRO-1, DeepSpeed engine, loader workers,
logging every step; `--zero` sets the stage) against a plain PyTorch loop over the same model, batches, optimizer and threads.

    python benchmarks/trainer_overhead.py [--preset small] [--steps 40] [--threads 2] [--workers 1] [--repeats 2]

Both run `--steps` optimizer steps of 2 micro-batches of one 1024-slot row (fp32, AdamW, clip 1.0), with
`--threads` compute threads and the same loader (`genlip.data.loader.build_loader`, `--workers` worker
processes), so both pay the same decoding on the same cores. genlip-train's step time is its loop's wall
time per step (the step, its bookkeeping and the log line; not validation or checkpoints). Median step
time over the steps after a warm-up, tokens/s of each (the median over `--repeats` rounds that alternate
which side runs first) and the ratio; for reference, the plain loop again
with its batches pre-loaded in memory (no decoding at all).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import make_raw, make_shards

from genlip.data.loader import LoaderSpec, MicroBatches, PackedRows, build_loader
from genlip.data.packing import PackingSpec
from genlip.data.shards import load_manifest
from genlip.model import build_model, get_preset

REPO = Path(__file__).resolve().parents[1]
SEQ, MAX_K, ROWS, WARMUP = 1024, 32, 2, 5


def plain_loop(ds: Path, preset: str, steps: int, threads: int, workers: int | None) -> tuple[float, float]:
    """The baseline; `workers` None: batches pre-loaded in memory, else read through the loader."""
    torch.set_num_threads(threads)
    vocab = -(-load_manifest(ds)["tokenizer"]["vocab_size"] // 128) * 128
    model = build_model(get_preset(preset, vocab_size=vocab, drop_path=0.0), seed=1234)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)
    spec = LoaderSpec(datasets=[str(ds)], packing=PackingSpec(SEQ, MAX_K), global_rows=ROWS, check="none",
                      num_workers=workers or 0)
    if workers is None:
        micro = MicroBatches(PackedRows(spec), dp_rank=0, dp_size=1)
        it = iter([micro[k] for k in range(steps * ROWS)])
    else:
        it = iter(build_loader(spec))
    times, tokens = [], []
    for s in range(steps):
        t0 = time.perf_counter()
        batches = [next(it)[0] for _ in range(ROWS)]
        for b in batches:
            (model(b).loss / ROWS).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        seg = torch.cat([b.segments for b in batches]).long()
        tokens.append(int((seg[..., 0] * seg[..., 1] + seg[..., 2] + seg[..., 3]).sum()))
    step = statistics.median(times[WARMUP:])
    return step, statistics.mean(tokens[WARMUP:]) / step


def our_trainer(ds: Path, run: Path, preset: str, steps: int, threads: int, workers: int, zero: int) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "genlip.train.trainer", str(REPO / "run_scripts/configs/tiny.yaml"),
           f"model.preset={preset}", "model.drop_path=0.0", f"data.datasets=[{ds}]", f"data.seq_len={SEQ}",
           f"data.max_samples_per_row={MAX_K}", f"data.num_workers={workers}", "data.check=none", f"train.output_dir={run}",
           f"train.max_steps={steps}", f"train.global_batch_rows={ROWS}", "train.log_interval=1", "train.save_interval=0",
           "optim.lr=1e-4", f"parallel.zero_stage={zero}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO))
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "perf/step_time" in r and r["step"] > WARMUP]
    step = statistics.median(r["perf/step_time"] for r in recs)
    return step, statistics.median(r["perf/tokens_per_s"] for r in recs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="loader worker processes, both sides")
    ap.add_argument("--repeats", type=int, default=2, help="alternated rounds of genlip-train and the plain loop")
    ap.add_argument("--zero", type=int, default=1, choices=(0, 1, 2), help="genlip-train's ZeRO stage")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tars, tok = make_raw(root, samples=1500, per_shard=500, size=128)
        ds = make_shards(root, tars, tok)
        ours, plain = [], []
        for r in range(args.repeats):  # alternated, so a change in the machine's load hits both sides
            pair = [lambda: ours.append(our_trainer(ds, root / f"run{r}", args.preset, args.steps, args.threads,
                                                    args.workers, args.zero)),
                    lambda: plain.append(plain_loop(ds, args.preset, args.steps, args.threads, args.workers))]
            for run in pair if r % 2 == 0 else pair[::-1]:
                run()
            print(f"round {r + 1}: genlip-train {ours[-1][1]:.0f} tokens/s, plain {plain[-1][1]:.0f} tokens/s, ratio "
                  f"{ours[-1][1] / plain[-1][1]:.3f}", flush=True)
        mem_step, mem_tps = plain_loop(ds, args.preset, args.steps, args.threads, None)
    ours_step, ours_tps = (statistics.median(x[i] for x in ours) for i in (0, 1))
    plain_step, plain_tps = (statistics.median(x[i] for x in plain) for i in (0, 1))
    print(f"plain PyTorch loop, same loader ({args.workers} worker(s)): {plain_step * 1e3:7.1f} ms/step  {plain_tps:8.0f} tokens/s")
    print(f"plain PyTorch loop, batches in memory:      {mem_step * 1e3:7.1f} ms/step  {mem_tps:8.0f} tokens/s")
    print(f"genlip-train:                               {ours_step * 1e3:7.1f} ms/step  {ours_tps:8.0f} tokens/s")
    print(f"ratio genlip-train / plain: {ours_tps / plain_tps:.3f} (same loader), {ours_tps / mem_tps:.3f} (batches in "
          f"memory); medians over steps {WARMUP + 1}..{args.steps} and {args.repeats} alternated rounds, {args.threads} threads")


if __name__ == "__main__":
    main()
