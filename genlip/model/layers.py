"""GenLIP transformer block: pre-LN, gated attention with MRoPE, SwiGLU, LayerScale, DropPath.

    x = x + DropPath(ls1 * GatedAttn(LN1(x)))
    x = x + DropPath(ls2 * SwiGLU(LN2(x)))

Legend: B rows, S slots, D width, H heads (local to this TP rank), Dh head dim, F FFN width.

Fused weights: `q_proj` is [2D, D] laid out [q for all heads | gate for all heads] (the authors'
layout, a plain chunk(2)); `fc_in` is [2F, D] laid out [gate | up] (the authors' `gate_fc`, `fc1`).
Both are "column" layers with chunks=2, so under TP each rank holds matching q/gate (gate/up) halves
and `chunk(2)` of the local output is still right.

DropPath draws one keep/drop per packed row, as the reference does (one row holds many samples).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from genlip.model.config import ModelConfig
from genlip.model.init import set_init
from genlip.model.rope import apply_rope


@functools.lru_cache(maxsize=None)
def _apex_layer_norm():
    try:
        from apex.normalization import FusedLayerNorm
    except ImportError:
        return None
    return FusedLayerNorm


def build_layer_norm(dim: int, eps: float) -> nn.Module:
    """apex's fused LayerNorm on a CUDA machine that has NVIDIA apex, torch's otherwise (same params)."""
    cls = _apex_layer_norm() if torch.cuda.is_available() else None
    norm = cls(dim, eps=eps) if cls is not None else nn.LayerNorm(dim, eps=eps)
    set_init(norm.weight, "const", 1.0)
    set_init(norm.bias, "const", 0.0)
    return norm


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))
        set_init(self.gamma, "const", init_value)

    def forward(self, x):
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth with one draw per row of a [B, S, D] batch."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x, rows: tuple[int, torch.Tensor] | None = None):
        """`rows` = (B, row of each token) when x is [1, T, D], the real slots of B rows (unpadded): the
        same B draws as for the padded rows, each token scaled by its row's."""
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        if rows is not None:
            mask = x.new_empty(rows[0], 1, 1).bernoulli_(keep).view(-1)[rows[1]].view(1, -1, 1)
        else:
            mask = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(keep)
        return x * mask / keep


class KVCache:
    """Keys and values of one layer for incremental decoding."""

    def __init__(self):
        self.k = self.v = None

    def update(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=1)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=1)
        return self.k, self.v

    def repeated(self, repeats: int) -> "KVCache":
        """A new cache with each row repeated `repeats` times (row b -> rows b*repeats ...); this one is kept."""
        out = KVCache()
        out.k = self.k.repeat_interleave(repeats, dim=0)
        out.v = self.v.repeat_interleave(repeats, dim=0)
        return out


class GatedAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, kit):
        super().__init__()
        D = cfg.width
        self.head_dim = cfg.head_dim
        self.q_proj = kit.column(D, 2 * D, init="xavier", chunks=2)
        self.k_proj = kit.column(D, D, init="xavier")
        self.v_proj = kit.column(D, D, init="xavier")
        self.out_proj = kit.row(D, D, init="xavier")

    def forward(self, x, rope, attend, cache: KVCache | None = None):
        B, S, _ = x.shape
        q, gate = self.q_proj(x).chunk(2, dim=-1)
        q = q.reshape(B, S, -1, self.head_dim)
        k = self.k_proj(x).view(B, S, -1, self.head_dim)
        v = self.v_proj(x).view(B, S, -1, self.head_dim)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v)
        out = attend(q, k, v) * torch.sigmoid(gate.reshape(B, S, -1, self.head_dim))
        return self.out_proj(out.reshape(B, S, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig, kit):
        super().__init__()
        self.fc_in = kit.column(cfg.width, 2 * cfg.ffn, std=cfg.init_std, chunks=2)
        self.fc2 = kit.row(cfg.ffn, cfg.width, std=cfg.init_std)

    def forward(self, x):
        gate, up = self.fc_in(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, kit):
        super().__init__()
        self.ln1 = build_layer_norm(cfg.width, cfg.ln_eps)
        self.attn = GatedAttention(cfg, kit)
        self.ls1 = LayerScale(cfg.width, cfg.layer_scale_init)
        self.ln2 = build_layer_norm(cfg.width, cfg.ln_eps)
        self.mlp = SwiGLU(cfg, kit)
        self.ls2 = LayerScale(cfg.width, cfg.layer_scale_init)
        self.drop_path = DropPath(cfg.drop_path)

    def forward(self, x, rope, attend, cache: KVCache | None = None):
        rows = getattr(attend, "rows", None)  # set when x holds the real slots only (GenLIP.trunk)
        x = x + self.drop_path(self.ls1(self.attn(self.ln1(x), rope, attend, cache)), rows)
        return x + self.drop_path(self.ls2(self.mlp(self.ln2(x))), rows)
