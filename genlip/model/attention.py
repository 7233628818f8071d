"""Prefix-LM attention kernels behind one interface.

`make_attention(layout, backend)` returns `attend(q, k, v) -> out`, all [B, S, H, Dh] (local heads),
computing, within each sample, image->image full, text->(image + earlier text), nothing across samples.
Every backend costs about the sum over samples of their squared lengths, not rows x S^2, except the oracle.

- `sdpa`: torch SDPA over each sample's own span (the CPU path). Samples are gathered out of the packed
  rows into a few batches of similar length (a bucket pads its samples to its longest, with the
  bucket boundaries chosen to minimise padded pairs + a per-call cost), one SDPA call per bucket with
  that bucket's [G, 1, Lb, Lb] prefix-LM mask; indices and masks are built once per forward. With
  `unpadded=True` (what `GenLIP.trunk` uses) q, k, v hold the T real slots only, [1, T, H, Dh].
- `sdpa_dense`: torch SDPA with the dense [B, S, S] mask over whole rows (cost rows x S^2). The oracle.
- `flash`: flash-attn varlen, two calls per layer whatever the number of samples, and no mask tensor:
  image queries over the sample's image keys (non-causal), text queries over the sample's [image; text]
  keys, causal aligned to the bottom-right corner (flash-attn >= 2.1 semantics when seqlen_q < seqlen_k),
  so text query j sees all image keys and text keys <= j.
- `flex`: FlexAttention with the rule `same sample and (q >= k or both image)` (the authors' rule), plus
  padding seeing itself; its block mask skips every block that crosses samples or holds only padding.
  Compiled on CUDA. On CPU torch runs it eagerly and forward-only (evaluation, tests).

Padding slots: `sdpa`, `sdpa_dense` and `flex` give each padding slot its own value (it sees only
itself), `flash` gives 0; nothing real ever sees padding, so it is inert either way.

Legend: B rows, S slots, H heads, Dh head dim, T real (non-padding) slots, G samples in a bucket,
Lb a bucket's padded sample length.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F

from genlip.model.batch import Layout

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

BACKENDS = ("sdpa", "sdpa_dense", "flash", "flex")

# NOTE: what one extra SDPA call (gathers, kernel set-up, backward) costs, in attention pairs (query x key),
# when `sdpa` decides whether to pad samples of different lengths into one bucket: about 2 ms of forward +
# backward on 2 CPU threads with the `small` preset's 6 heads x 32, the time of ~190^2 pairs. Measured on
# stage-1-like and demo rows: anything from 128^2 to "one bucket for all" is within noise there, while one
# call per distinct length is 1.3-3x slower; stage-2 rows (16..1024 patches) still get several buckets.
CALL_COST_PAIRS = 192 * 192


@functools.lru_cache(maxsize=None)
def _flash_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def resolve_backend(name: str, device: torch.device) -> str:
    """Pick the kernel for `auto`; check that an explicit choice can run on `device`."""
    cuda = torch.device(device).type == "cuda"
    if name == "auto":
        if cuda:
            return "flash" if _flash_varlen() is not None else "flex"
        return "sdpa"
    if name == "flash" and (_flash_varlen() is None or not cuda):
        raise RuntimeError("attn_backend=flash needs the flash-attn package and a CUDA device; "
                           "install the [gpu] extra or set model.attn_backend=sdpa")
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}")
    return name


def make_attention(layout: Layout, backend: str, *, varlen_fn=None, unpadded: bool = False) -> Attend:
    """Build the attention function for one forward pass (shared by all layers).

    `varlen_fn` replaces flash-attn's `flash_attn_varlen_func` (tests use `varlen_reference`).
    `unpadded` (sdpa only): q, k, v are [1, T, H, Dh], the real slots alone in order (`layout.real_index`).
    """
    if backend == "sdpa":
        return _span_attention(layout, unpadded=unpadded)
    if unpadded:
        raise ValueError(f"attention backend {backend!r} runs on padded rows only")
    if backend == "sdpa_dense":
        mask = layout.dense_mask()[:, None]  # [B, 1, S, S]

        def attend(q, k, v):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=mask)
            return out.transpose(1, 2)

        return attend
    if backend == "flash":
        return _flash_attention(layout, varlen_fn or _flash_varlen())
    if backend == "flex":
        return _flex_attention(layout)
    raise ValueError(f"unknown attention backend {backend!r}")


def _bucket_samples(lengths: list[int], call_cost: int) -> list[list[int]]:
    """Groups of sample numbers to run as one padded batch each: sorted by length, cut where the padded
    pairs sum(G * Lb^2) plus `call_cost` per group is least (exact dynamic programme over the distinct
    lengths, coarsened to at most 128 length classes)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    quantum = max(1, -(-max(lengths, default=1) // 128))
    classes: list[tuple[int, list[int]]] = []  # (padded length, samples), ascending
    for i in order:
        key = -(-lengths[i] // quantum)
        if classes and classes[-1][0] == key:
            classes[-1][1].append(i)
        else:
            classes.append((key, [i]))
    longest = [max(lengths[i] for i in members) for _, members in classes]
    count = [0]
    for _, members in classes:
        count.append(count[-1] + len(members))
    best, cut = [0], [0]  # best[j]: least cost of the first j classes; the last group starts at class cut[j]
    for j in range(1, len(classes) + 1):
        sq = longest[j - 1] ** 2
        cost, start = min((best[i] + (count[j] - count[i]) * sq + call_cost, i) for i in range(j))
        best.append(cost)
        cut.append(start)
    groups, j = [], len(classes)
    while j > 0:
        groups.append([s for _, members in classes[cut[j]:j] for s in members])
        j = cut[j]
    return groups[::-1]


class RowMap:
    """Where each bucket's rows come from and go to, over n flat rows (slots, or real positions); used by the
    span attention (one bucket per SDPA call) and by `GenLIP.trunk` (one bucket: the real slots).

    src[b]: the row of each of the bucket's G*Lb positions; a padding position repeats a real row of the
    bucket (any finite value will do: it is masked out as a key and isolated as a query, see the masks).
    dst[b]: the same, with padding positions sent to row n, a scratch row past the end.
    rows: every row some bucket takes (all n when unpadded); `complete` when that is every row."""

    def __init__(self, src, dst, n, rows):
        self.src, self.dst, self.n, self.rows = src, dst, n, rows
        self.complete = len(rows) == n

    def scatter(self, parts, base=None):
        """[n, ...] with each bucket position's part at its row; rows no bucket takes: base's, else 0."""
        shape = parts[0].shape[1:]
        if base is not None:
            out = torch.cat([base, base.new_empty(1, *shape)])
        elif self.complete:
            out = parts[0].new_empty(self.n + 1, *shape)
        else:
            out = parts[0].new_zeros(self.n + 1, *shape)
        for dst, part in zip(self.dst, parts):
            out.index_copy_(0, dst, part)
        return out[:self.n]


class ToBuckets(torch.autograd.Function):
    """x [n, ...] -> one [G*Lb, ...] tensor per bucket of a RowMap; backward puts each gradient row back where
    it came from. NOTE: index_select's own backward is a scatter-add (index_add), slow on CPU: it was 28% of
    a training step; every row is taken once, so a copy to known places (index_copy_) does it."""

    @staticmethod
    def forward(ctx, x, buckets):
        ctx.buckets, ctx.tail = buckets, x.shape[1:]
        return tuple(x.index_select(0, src) for src in buckets.src)

    @staticmethod
    def backward(ctx, *grads):
        return ctx.buckets.scatter([g.reshape(len(d), *ctx.tail) for g, d in zip(grads, ctx.buckets.dst)]), None


class FromBuckets(torch.autograd.Function):
    """The inverse: bucket parts (any shape of G*Lb rows of `tail`) -> [n, *tail]; rows no bucket takes are
    `base`'s (padding slots keep their own value), or 0 without a base."""

    @staticmethod
    def forward(ctx, buckets, base, tail, *parts):
        ctx.buckets = buckets
        ctx.has_base = base is not None
        ctx.shapes = [p.shape for p in parts]
        return buckets.scatter([p.reshape(len(d), *tail) for p, d in zip(parts, buckets.dst)], base)

    @staticmethod
    def backward(ctx, g):
        b = ctx.buckets
        g_base = g.index_fill(0, b.rows, 0) if ctx.has_base else None
        return (None, g_base, None, *(g.index_select(0, src).view(shape) for src, shape in zip(b.src, ctx.shapes)))


def _span_attention(layout: Layout, call_cost: int = CALL_COST_PAIRS, unpadded: bool = False) -> Attend:
    """SDPA over each sample's span, samples batched by length (see the module docstring). `unpadded`: the
    inputs hold the T real slots only, so sample i is rows cu_real[i]..cu_real[i+1] of them."""
    device = layout.sample_id.device
    cu_real, cu_image = layout.cu_real.long(), layout.cu_image.long()
    # flat slot (or real position) of each sample's first token
    start = (cu_real[:-1] if unpadded else layout.real_index[cu_real[:-1]]).cpu()
    length = (cu_real[1:] - cu_real[:-1]).cpu()
    n_image = (cu_image[1:] - cu_image[:-1]).cpu()
    n = int(cu_real[-1]) if unpadded else layout.batch_size * layout.seq_len
    shapes, masks, src, dst = [], [], [], []  # per bucket: (G, Lb), [G, 1, Lb, Lb] mask, [G*Lb] rows
    for group in _bucket_samples(length.tolist(), call_cost):
        g = torch.tensor(group)
        L, ni = length[g], n_image[g]
        Lb = int(L.max())
        pos = torch.arange(Lb)
        inside = pos[None, :] < L[:, None]
        row = start[g, None] + pos
        src.append(torch.where(inside, row, start[g[0]]).flatten())
        dst.append(torch.where(inside, row, n).flatten())
        qi, kj = pos[None, :, None], pos[None, None, :]
        real_q, real_k = qi < L[:, None, None], kj < L[:, None, None]
        prefix_lm = (kj <= qi) | ((qi < ni[:, None, None]) & (kj < ni[:, None, None]))
        # a padding position sees only itself and no real query sees it: whatever row it repeats, and
        # whatever gradient reaches its output, nothing real depends on it
        masks.append((real_q & real_k & prefix_lm) | (~real_q & (kj == qi)))
        shapes.append((len(group), Lb))
    if shapes:
        rows = torch.cat([d[d < n] for d in dst])
        buckets = RowMap([s.to(device) for s in src], [d.to(device) for d in dst], n, rows.to(device))
        masks = [m[:, None].to(device) for m in masks]
    additive = {}  # dtype -> masks as 0 / -inf, made once per forward (SDPA would convert bool ones per call)

    def attend(q, k, v):
        B, S, H, Dh = q.shape
        if not shapes:  # every slot is padding: each sees only itself
            return v.clone()
        if q.dtype not in additive:
            additive[q.dtype] = [torch.zeros(m.shape, dtype=q.dtype, device=device).masked_fill_(~m, -math.inf)
                                 for m in masks]
        parts = [ToBuckets.apply(t.reshape(B * S, H, Dh), buckets) for t in (q, k, v)]
        outs = []
        for (G, Lb), mask, qs, ks, vs in zip(shapes, additive[q.dtype], *parts):
            qs, ks, vs = (t.view(G, Lb, H, Dh).transpose(1, 2) for t in (qs, ks, vs))
            outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask).transpose(1, 2))  # [G, Lb, H, Dh]
        # padding slots keep their own value, as in the dense oracle where each sees only itself
        base = None if buckets.complete else v.reshape(B * S, H, Dh)
        return FromBuckets.apply(buckets, base, (H, Dh), *outs).view(B, S, H, Dh)

    return attend


def _flash_attention(layout: Layout, varlen) -> Attend:
    img, txt, real = layout.image_index, layout.text_index, layout.real_index
    cu_i, cu_t, cu_r = layout.cu_image, layout.cu_text, layout.cu_real

    def attend(q, k, v):
        B, S, H, Dh = q.shape
        qf, kf, vf = (t.reshape(B * S, H, Dh) for t in (q, k, v))
        out = qf.new_zeros(B * S, H, Dh)
        out[img] = varlen(qf[img], kf[img], vf[img], cu_i, cu_i, layout.max_image, layout.max_image,
                          causal=False)
        out[txt] = varlen(qf[txt], kf[real], vf[real], cu_t, cu_r, layout.max_text, layout.max_real,
                          causal=True)
        return out.view(B, S, H, Dh)

    return attend


def varlen_reference(q, k, v, cu_q, cu_k, max_q, max_k, causal=False, softmax_scale=None):
    """flash_attn_varlen_func's semantics in plain torch (bottom-right causal), for CPU tests."""
    outs = []
    for i in range(len(cu_q) - 1):
        qs, ks = q[cu_q[i]:cu_q[i + 1]], k[cu_k[i]:cu_k[i + 1]]
        vs = v[cu_k[i]:cu_k[i + 1]]
        lq, lk = qs.shape[0], ks.shape[0]
        mask = None
        if causal:
            mask = torch.arange(lq)[:, None] + (lk - lq) >= torch.arange(lk)[None, :]
        o = F.scaled_dot_product_attention(qs.transpose(0, 1), ks.transpose(0, 1), vs.transpose(0, 1),
                                           attn_mask=mask, scale=softmax_scale)
        outs.append(o.transpose(0, 1))
    return torch.cat(outs) if outs else q.new_zeros(0, *q.shape[1:])


def make_flex_block_mask(layout: Layout):
    """FlexAttention BlockMask of the prefix-LM rule: it skips every block crossing samples or holding
    only padding, so its work is about the sum of the samples' squared lengths at block granularity."""
    from torch.nn.attention.flex_attention import create_block_mask

    sid, img = layout.sample_id, layout.is_image

    def mask_mod(b, h, q_idx, kv_idx):
        same = (sid[b, q_idx] == sid[b, kv_idx]) & (sid[b, q_idx] >= 0)
        # padding sees only itself (as in the dense oracle), so blocks of padding are skipped too
        return (same & ((q_idx >= kv_idx) | (img[b, q_idx] & img[b, kv_idx]))) | (q_idx == kv_idx)

    B, S = sid.shape
    return create_block_mask(mask_mod, B, None, S, S, device=sid.device)


def _flex_attention(layout: Layout) -> Attend:
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = make_flex_block_mask(layout)
    kernel = _compiled_flex() if layout.sample_id.is_cuda else flex_attention

    def attend(q, k, v):
        Dh = q.shape[-1]
        pad = (1 << (Dh - 1).bit_length()) - Dh  # flex kernels want a power-of-two head dim
        q, k, v = (F.pad(t.transpose(1, 2), (0, pad)) for t in (q, k, v))
        out = kernel(q, k, v, block_mask=block_mask, scale=1.0 / math.sqrt(Dh))
        return out[..., :Dh].transpose(1, 2)

    return attend


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def attend_all(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Decode step: new text queries see every cached key of their own row."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def attend_cached(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Several new text tokens after a cache: the keys are [cache (Lk - Lq); the Lq new tokens], and new
    token j sees every cached key and new tokens <= j (causal aligned to the bottom-right corner).
    With one new token this is `attend_all`."""
    Lq, Lk = q.shape[1], k.shape[1]
    mask = torch.arange(Lk, device=q.device)[None, :] <= torch.arange(Lq, device=q.device)[:, None] + (Lk - Lq)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)
