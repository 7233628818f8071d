"""Attention cost on CPU: packed rows with per-sample attention against padded per-sample batching, and the
attention time against the sum of the samples' squared lengths.

    flock /tmp/genlip-bench.lock python benchmarks/attention_cost.py [--preset small] [--rounds 3] [--threads 2]
        [--seq-lens 512 1024 4096] [--mix stage1] [--slots 4096] [--batches random|plan]

(a) Training step (forward + backward, fp32, the same model and weights for every strategy) on the same
    samples: stage-1-like lengths (`stage1`: 14x14 patches, a 0- or 6-token prompt, skewed 10-80 caption
    tokens; `demo`: 6x6 patches and 15-40 tokens). `--batches random` (default): each step draws samples at
    random up to `--slots` tokens, as the peer's shuffling loader does, and we pack them into rows of S
    (`pack_epoch`, best fit); `--batches plan`: each step is `--slots // S` consecutive rows of one best-fit
    plan, whose rows hold near-equal lengths, so with one or two rows per step the padded peer pads almost
    nothing (its best case). Strategies:
      ours    the packed rows, attention over each sample's span (`attn_backend=sdpa`, the CPU default)
      padded  the peer's strategy (open_clip's GenLIP port): the same samples, one per row, each padded to
              the longest of the step, prefix-LM mask per sample (`sdpa_dense` on those rows)
      dense   the packed rows with one dense [S, S] mask per row (`sdpa_dense`, the CPU path before)
    Interleaved rounds (a different step each round, after one warm-up round), median step time, tokens/s of
    real tokens and the ratios ours/padded and ours/dense; `paired` is the median over rounds of each
    round's ours/padded ratio (same samples, run back to back).
(b) Attention alone (one layer's q, k, v of the preset's heads, forward + backward) on one row of S slots
    holding different sample mixes: time of `sdpa` against sum(L_i^2), and of `sdpa_dense` against S^2.
"""

import argparse
import statistics
import time

import common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import torch

from genlip.data.packing import PackingSpec, pack_epoch
from genlip.model import PackedBatch, build_model, get_preset, make_layout
from genlip.model.attention import make_attention

MIXES = {  # (grid side, prompt lengths to draw from, caption sampler)
    "stage1": (14, (0, 6), lambda rng, n: np.clip(rng.lognormal(np.log(24), 0.55, n), 10, 80).astype(np.int64)),
    "demo": (6, (0, 6), lambda rng, n: rng.integers(15, 41, n)),
}


def draw_samples(mix: str, n: int, seed: int = 0) -> np.ndarray:
    """[n, 4] segment rows (grid_h, grid_w, prompt_len, text_len) of one length mix."""
    side, prompts, caption = MIXES[mix]
    rng = np.random.default_rng(seed)
    c = caption(rng, n) + 1  # + end token
    p = rng.choice(prompts, n)
    return np.stack([np.full(n, side), np.full(n, side), p, c], 1)


def make_packed(seg: np.ndarray, seq_len: int, vocab: int, patch_dim: int, g: torch.Generator) -> PackedBatch:
    """Rows of samples given as a list of [k, 4] arrays -> PackedBatch with random pixels and tokens."""
    k = max(len(r) for r in seg)
    table = torch.zeros(len(seg), k, 4, dtype=torch.int32)
    for b, r in enumerate(seg):
        table[b, :len(r)] = torch.as_tensor(r, dtype=torch.int32)
    n_img = int((table[..., 0] * table[..., 1]).sum())
    tokens = torch.randint(1, vocab, (len(seg), seq_len), generator=g)
    return PackedBatch(torch.randn(n_img, patch_dim, generator=g), tokens, table)


def steps_for(mix: str, seq_len: int, slots: int, steps: int, cfg, batches: str
              ) -> list[tuple[PackedBatch, PackedBatch, int]]:
    """(packed rows, the same samples one per row padded to the longest, real tokens) per step.

    batches="random": each step draws samples at random until they would pass `slots` tokens (what the peer's
    shuffling loader gives it), and we pack the same samples into rows of `seq_len` (best fit, as many rows
    as that takes). batches="plan": each step is `slots // seq_len` consecutive rows of one best-fit plan over
    4000 samples; best fit puts samples of near-equal length into a row, so with few rows per step the
    padded peer gets near-uniform lengths: its best case."""
    samples = draw_samples(mix, 4000, seed=seq_len)
    lengths = samples[:, 0] * samples[:, 1] + samples[:, 2] + samples[:, 3]
    g = torch.Generator().manual_seed(seq_len)
    rng = np.random.default_rng(seq_len)
    if batches == "plan":
        rows = max(1, slots // seq_len)
        offsets, order = pack_epoch(lengths, PackingSpec(budget=seq_len, max_samples_per_row=256, window=4000), 0)
        step_rows = [[order[offsets[r]:offsets[r + 1]] for r in range(s * rows, (s + 1) * rows)] for s in range(steps)]
    else:
        step_rows = []
        for _ in range(steps):
            ids = rng.permutation(len(lengths))
            ids = ids[:max(1, int(np.searchsorted(np.cumsum(lengths[ids]), slots, side="right")))]
            offsets, order = pack_epoch(lengths[ids], PackingSpec(budget=seq_len, max_samples_per_row=256,
                                                                  window=len(ids)), 0)
            step_rows.append([ids[order[offsets[r]:offsets[r + 1]]] for r in range(len(offsets) - 1)])
    out = []
    for row_ids in step_rows:
        packed = make_packed([samples[ids] for ids in row_ids], seq_len, cfg.vocab_size, cfg.patch_dim, g)
        ids = np.concatenate(row_ids)
        longest = int(lengths[ids].max())
        padded = make_packed([samples[i:i + 1] for i in ids], longest, cfg.vocab_size, cfg.patch_dim, g)
        out.append((packed, padded, int(lengths[ids].sum())))
    return out


def train_step(model, batch: PackedBatch, backend: str) -> float:
    model.cfg.attn_backend = backend  # read per forward: one model, one set of weights for every strategy
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    model(batch).loss.backward()
    return time.perf_counter() - t0


def part_a(args, cfg) -> None:
    model = build_model(cfg, seed=0).train()
    print(f"(a) {args.preset} fwd+bwd, {args.mix} mix, {args.batches} batches of {args.slots} slots, median of "
          f"{args.rounds} rounds (real tokens/s)")
    print(f"{'S':>5} {'rows':>4} {'samples':>7} {'fill':>5} {'pad fill':>8} {'ours':>8} {'padded':>8} {'dense':>8}"
          f" {'ours/padded':>11} {'paired':>11} {'ours/dense':>10}")
    for S in args.seq_lens:
        steps = steps_for(args.mix, S, args.slots, args.rounds + 1, cfg, args.batches)
        times = {"sdpa": [], "padded": [], "sdpa_dense": []}
        for r, (packed, padded, _) in enumerate(steps):
            runs = [("sdpa", packed, "sdpa"), ("padded", padded, "sdpa_dense"), ("sdpa_dense", packed, "sdpa_dense")]
            for name, batch, backend in runs[r % 3:] + runs[:r % 3]:  # rotate the order round by round
                dt = train_step(model, batch, backend)
                if r:  # round 0 is the warm-up
                    times[name].append(dt)
        tps = {n: statistics.median(tok / t for (_, _, tok), t in zip(steps[1:], ts)) for n, ts in times.items()}
        # paired: each round's ratio on the same samples, minutes apart at most; its median is less exposed to
        # the machine's load drifting during the run than the ratio of the two medians
        paired = statistics.median(b / a for a, b in zip(times["sdpa"], times["padded"]))
        rows = statistics.median(packed.tokens.shape[0] for packed, _, _ in steps[1:])
        n = statistics.median(padded.tokens.shape[0] for _, padded, _ in steps[1:])
        fill = statistics.median(tok / packed.tokens.numel() for packed, _, tok in steps[1:])
        pad_fill = statistics.median(tok / padded.tokens.numel() for _, padded, tok in steps[1:])
        print(f"{S:>5} {rows:>4g} {n:>7g} {fill:>5.2f} {pad_fill:>8.2f} "
              f"{tps['sdpa']:>8.0f} {tps['padded']:>8.0f} {tps['sdpa_dense']:>8.0f} "
              f"{tps['sdpa'] / tps['padded']:>10.2f}x {paired:>10.2f}x {tps['sdpa'] / tps['sdpa_dense']:>9.2f}x")


def part_b(args, cfg) -> None:
    S, H, Dh = args.attn_seq_len, cfg.heads, cfg.head_dim
    # rows of equal samples (3/4 image, 1/4 text) of length n, then rows of the two realistic mixes
    mixes = {f"{S // n} x {n}": [[1, n - n // 4, 0, n // 4]] * (S // n) for n in (S, S // 4, S // 16, S // 64)}
    for mix in MIXES:
        seg, room = [], S
        for s in draw_samples(mix, 400, seed=1):
            if s[0] * s[1] + s[2] + s[3] <= room:
                seg.append(s.tolist())
                room -= s[0] * s[1] + s[2] + s[3]
        mixes[f"{mix} x {len(seg)}"] = seg
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, S, H, Dh, generator=g, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, S, H, Dh, generator=g)
    layouts = {name: make_layout(torch.tensor([seg]), S) for name, seg in mixes.items()}
    times = {(name, b): [] for name in mixes for b in ("sdpa", "sdpa_dense")}
    for r in range(args.rounds + 1):
        for name, layout in layouts.items():
            for backend in ("sdpa", "sdpa_dense"):
                t0 = time.perf_counter()
                attend = make_attention(layout, backend)  # once per forward, shared by every layer
                t1 = time.perf_counter()
                out = attend(q, k, v)
                torch.autograd.grad(out, (q, k, v), grad)
                if r:
                    times[name, backend].append((t1 - t0, time.perf_counter() - t1))
    print(f"\n(b) attention fwd+bwd, one row of {S} slots, {H} heads x {Dh}, median of {args.rounds} rounds "
          f"(setup = make_attention, once per forward)")
    print(f"{'row':<16} {'sum L^2':>9} {'ours ms':>8} {'ns/pair':>8} {'setup ms':>8} {'dense ms':>8} {'ns/pair':>8}"
          f" {'dense/ours':>10}")
    for name, layout in layouts.items():
        lengths = (layout.cu_real[1:] - layout.cu_real[:-1]).long()
        pairs = int((lengths ** 2).sum())
        ours = statistics.median(t for _, t in times[name, "sdpa"])
        setup = statistics.median(s for s, _ in times[name, "sdpa"])
        dense = statistics.median(t for _, t in times[name, "sdpa_dense"])
        print(f"{name:<16} {pairs / 1e6:>8.2f}M {1e3 * ours:>8.1f} {1e9 * ours / pairs:>8.1f} {1e3 * setup:>8.2f} "
              f"{1e3 * dense:>8.1f} {1e9 * dense / S ** 2:>8.1f} {dense / ours:>9.1f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--mix", default="stage1", choices=sorted(MIXES))
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[512, 1024, 4096])
    ap.add_argument("--slots", type=int, default=4096, help="tokens per step in (a)")
    ap.add_argument("--batches", choices=["random", "plan"], default="random",
                    help="(a)'s steps: random samples (the peer's loader), packed by us into rows of S; or "
                         "consecutive rows of one best-fit plan (near-uniform lengths: the padded peer's best case)")
    ap.add_argument("--attn-seq-len", type=int, default=2048, help="row length of (b)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", choices=["a", "b"], help="run only the other part")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = get_preset(args.preset, drop_path=0.0)
    if args.skip != "a":
        part_a(args, cfg)
    if args.skip != "b":
        part_b(args, cfg)


if __name__ == "__main__":
    main()
