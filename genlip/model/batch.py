"""The packed batch the model consumes, and the per-position layout derived from its segment table.

A batch is B rows of S token slots. Each row holds samples back to back from slot 0, each sample laid out
as `[image patches (h*w)] [prompt (p)] [caption + end (c)]`, then padding. Everything per position
(which sample, image or text, MRoPE positions, mask, loss targets) is a pure function of the small
segment table, so a pipeline stage can rebuild it from tensors alone and no [S, S] mask ever travels.

Legend: B rows, S slots per row, K sample slots per row, N patches in the batch, D width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Columns of the segment table.
GRID_H, GRID_W, PROMPT_LEN, TEXT_LEN = range(4)
SEGMENT_FIELDS = 4


@dataclass
class PackedBatch:
    """One packed micro-batch."""

    pixels: torch.Tensor
    """[N, C*p*p]: patches of every image, row-major within an image, samples in (row, slot) order; float in
    [-1, 1], or uint8 0..255 (the loader's output, normalised by the model with mean = std = 0.5)."""
    tokens: torch.Tensor
    """[B, S] long: prompt, caption and end token ids at text positions; 0 at image and padding slots."""
    segments: torch.Tensor
    """[B, K, 4] int: (grid_h, grid_w, prompt_len, text_len) per sample; unused slots are all zero."""

    def to(self, device, dtype=None) -> "PackedBatch":
        cast = dtype is not None and self.pixels.is_floating_point()
        px = self.pixels.to(device=device, dtype=dtype) if cast else self.pixels.to(device)
        return PackedBatch(px, self.tokens.to(device), self.segments.to(device))


@dataclass
class Layout:
    """Per-position facts of a packed batch (see module docstring)."""

    batch_size: int
    seq_len: int
    sample_id: torch.Tensor  # [B, S] long, running sample number in the batch, -1 at padding
    is_image: torch.Tensor  # [B, S] bool
    position_ids: torch.Tensor  # [3, B, S] long, MRoPE (t, h, w)
    real_index: torch.Tensor  # [T] flat (b*S + s) index of every non-padding slot, in order
    image_index: torch.Tensor  # [N] flat index of image slots, in pixel order
    text_index: torch.Tensor  # [L] flat index of prompt/caption/end slots
    target_index: torch.Tensor  # [M] flat index of each slot whose next token is a caption/end target
    target_row: torch.Tensor  # [M] row of each target
    cu_image: torch.Tensor  # [n+1] int32 cumulative image lengths per sample (flash varlen)
    cu_text: torch.Tensor  # [n+1] int32 cumulative text lengths per sample
    cu_real: torch.Tensor  # [n+1] int32 cumulative sample lengths
    max_image: int
    max_text: int
    max_real: int

    def dense_mask(self) -> torch.Tensor:
        """[B, S, S] bool, True = may attend. The CPU path and the test oracle.

        Same sample and (key not after query, or both image). Padding sees only itself, which keeps
        softmax finite; no real token ever sees padding, so padding is inert.
        """
        sid, img = self.sample_id, self.is_image
        same = (sid[:, :, None] == sid[:, None, :]) & (sid[:, :, None] >= 0)
        idx = torch.arange(self.seq_len, device=sid.device)
        causal = idx[:, None] >= idx[None, :]
        allowed = same & (causal | (img[:, :, None] & img[:, None, :]))
        pad = sid < 0
        return allowed | (pad[:, :, None] & torch.eye(self.seq_len, dtype=torch.bool, device=sid.device))


def _cu(lengths: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)


def make_layout(segments: torch.Tensor, seq_len: int, device=None) -> Layout:
    """Derive the `Layout` of rows of `seq_len` slots from a [B, K, 4] segment table."""
    device = segments.device if device is None else device
    seg = segments.detach().to("cpu", torch.long)
    if seg.dim() != 3 or seg.shape[-1] != SEGMENT_FIELDS:
        raise ValueError(f"segment table must be [B, K, {SEGMENT_FIELDS}], got {tuple(seg.shape)}")
    if (seg < 0).any():
        raise ValueError("segment table has negative entries")
    B, K, _ = seg.shape
    h, w, p, c = seg.unbind(-1)
    n_img, n_txt = h * w, p + c
    n = n_img + n_txt
    bad = (n > 0) & (n_img == 0)
    if bad.any():
        b, k = bad.nonzero()[0].tolist()
        raise ValueError(f"sample in row {b}, slot {k} has text but no image patches; every sample needs an image")
    over = n.sum(1) > seq_len
    if over.any():
        b = int(over.nonzero()[0])
        raise ValueError(f"row {b} holds {int(n[b].sum())} tokens, more than the row length {seq_len}")

    used = n > 0
    start = n.cumsum(1) - n
    row = torch.arange(B)[:, None].expand(B, K)[used]
    h, w, p, c, n, n_img, start = (t[used] for t in (h, w, p, c, n, n_img, start))
    num = n.numel()
    smp = torch.repeat_interleave(torch.arange(num), n)
    local = torch.arange(int(n.sum())) - torch.repeat_interleave(n.cumsum(0) - n, n)
    flat = (row * seq_len + start)[smp] + local
    img = local < n_img[smp]
    k_txt = local - n_img[smp]

    sample_id = torch.full((B * seq_len,), -1, dtype=torch.long)
    sample_id[flat] = smp
    is_image = torch.zeros(B * seq_len, dtype=torch.bool)
    is_image[flat] = img
    pos = torch.zeros(3, B * seq_len, dtype=torch.long)
    side = torch.maximum(h, w)[smp]
    text_pos = side + k_txt
    wi = w[smp]
    pos[0, flat] = torch.where(img, 0, text_pos)
    pos[1, flat] = torch.where(img, local // wi, text_pos)
    pos[2, flat] = torch.where(img, local % wi, text_pos)

    is_target = k_txt >= p[smp]  # caption and end tokens are predicted from the slot before them
    target_index = flat[is_target] - 1

    def dev(t):
        return t.to(device)

    return Layout(
        batch_size=B,
        seq_len=seq_len,
        sample_id=dev(sample_id.view(B, seq_len)),
        is_image=dev(is_image.view(B, seq_len)),
        position_ids=dev(pos.view(3, B, seq_len)),
        real_index=dev(flat),
        image_index=dev(flat[img]),
        text_index=dev(flat[~img]),
        target_index=dev(target_index),
        target_row=dev(target_index // seq_len),
        cu_image=dev(_cu(n_img)),
        cu_text=dev(_cu(p + c)),
        cu_real=dev(_cu(n)),
        max_image=int(n_img.max()) if num else 0,
        max_text=int((p + c).max()) if num else 0,
        max_real=int(n.max()) if num else 0,
    )
