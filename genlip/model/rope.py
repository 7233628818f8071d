"""Interleaved 3-axis multimodal RoPE (MRoPE), as in GENLIP_SPEC section 3.

Frequency slot i (of Dh/2) rotates by axis h if i % 3 == 1 and i < 3*sec_h, by axis w if i % 3 == 2 and
i < 3*sec_w, otherwise by axis t (sec_t is never read). Rotation is half-split (`rotate_half`).
Angles and cos/sin are computed in fp32, then cast to the activation dtype, as the reference does.

Legend: B rows, S slots, H heads, Dh head dim.
"""

from __future__ import annotations

import torch


def mrope_slot_axes(head_dim: int, section: tuple[int, int, int]) -> torch.Tensor:
    """[Dh/2] long: which position axis (0=t, 1=h, 2=w) drives each frequency slot."""
    i = torch.arange(head_dim // 2)
    axes = torch.zeros_like(i)
    axes[(i % 3 == 1) & (i < 3 * section[1])] = 1
    axes[(i % 3 == 2) & (i < 3 * section[2])] = 2
    return axes


def make_rope(position_ids: torch.Tensor, *, head_dim: int, section: tuple[int, int, int], theta: float,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [B, S, Dh] for position ids [3, B, S]."""
    device = position_ids.device
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    axes = mrope_slot_axes(head_dim, section).to(device)
    pos = position_ids.float()[axes]  # [Dh/2, B, S]: each slot's own axis
    freqs = pos.permute(1, 2, 0) * inv_freq  # [B, S, Dh/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, S, H, Dh] by cos/sin [B, S, Dh]."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return x * cos + rotate_half(x) * sin
