"""Prefix-LM attention kernels behind one interface.

`make_attention(layout, backend)` returns `attend(q, k, v) -> out`, all [B, S, H, Dh] (local heads),
computing, within each sample, image->image full, text->(image + earlier text), nothing across samples.

- `sdpa`: torch SDPA with the dense [B, S, S] boolean mask. CPU path and the oracle.
- `flash`: flash-attn varlen, two calls per layer and no mask tensor: image queries over the sample's
  image keys (non-causal), text queries over the sample's [image; text] keys, causal aligned to the
  bottom-right corner (flash-attn >= 2.1 semantics when seqlen_q < seqlen_k), so text query j sees all
  image keys and text keys <= j.
- `flex`: FlexAttention with the rule `same sample and (q >= k or both image)` (the authors' rule);
  compiled on CUDA. On CPU torch runs it eagerly and forward-only (evaluation, tests).

Legend: B rows, S slots, H heads, Dh head dim, T real (non-padding) slots.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F

from genlip.model.batch import Layout

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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
    if name not in ("sdpa", "flash", "flex"):
        raise ValueError(f"unknown attention backend {name!r}")
    return name


def make_attention(layout: Layout, backend: str, *, varlen_fn=None) -> Attend:
    """Build the attention function for one forward pass (shared by all layers).

    `varlen_fn` replaces flash-attn's `flash_attn_varlen_func` (tests use `varlen_reference`).
    """
    if backend == "sdpa":
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


def _flex_attention(layout: Layout) -> Attend:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    sid, img = layout.sample_id, layout.is_image

    def mask_mod(b, h, q_idx, kv_idx):
        same = sid[b, q_idx] == sid[b, kv_idx]
        return same & ((q_idx >= kv_idx) | (img[b, q_idx] & img[b, kv_idx]))

    B, S = sid.shape
    block_mask = create_block_mask(mask_mod, B, None, S, S, device=sid.device)
    kernel = _compiled_flex() if sid.is_cuda else flex_attention

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
