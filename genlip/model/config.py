"""Model configuration and named size presets.

Every size of GenLIP is a `ModelConfig`; presets are plain Python (torchtitan "flavors"). The released
sizes follow the authors' configs (see GENLIP_SPEC section 6); `l16_paper` is the L/16 of the paper's
Table 1, which differs from the released one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# The reference uses Qwen3's tokenizer; its embedding table has 151936 rows.
QWEN3_VOCAB = 151936


@dataclass
class ModelConfig:
    """Shape and regularisation of one GenLIP model."""

    num_layers: int = 2
    """Number of transformer blocks."""
    width: int = 64
    """Residual width D of the vision/text trunk."""
    heads: int = 4
    """Attention heads (plain multi-head attention; head dim = width / heads)."""
    ffn: int = 128
    """Hidden size of the SwiGLU feed-forward layer."""
    text_width: int = 48
    """Text embedding width E; when it differs from `width`, in_proj/proj map between them."""
    vocab_size: int = 1024
    """Rows of the embedding table and LM head (tokenizer vocab, padded for tensor parallelism)."""
    patch_size: int = 16
    """Side of a square image patch in pixels."""
    channels: int = 3
    """Image channels."""
    mrope_section: tuple[int, int, int] = (3, 3, 2)
    """MRoPE sections (t, h, w) in frequency slots; interleaved, t is never read (Qwen3-VL style)."""
    rope_theta: float = 10000.0
    """RoPE base."""
    drop_path: float = 0.0
    """DropPath rate, the same for every block (0.1 for L and So, 0.2 for g)."""
    layer_scale_init: float = 0.1
    """Initial value of the LayerScale vectors."""
    ln_eps: float = 1e-6
    """LayerNorm epsilon."""
    init_std: float = 0.02
    """Std of the normal init of embeddings, patch conv, SwiGLU, in/out projections and LM head."""
    attn_backend: str = "auto"
    """Attention kernel: auto (flash-attn varlen on CUDA if installed, else flex on CUDA, else sdpa), sdpa, sdpa_dense, flash, flex."""
    # NOTE: sdpa runs SDPA over each sample's own span (cost: sum of squared sample lengths); sdpa_dense runs it over
    # whole rows with a dense [S, S] mask (cost: rows x S^2) and is the test oracle.

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size * self.patch_size

    def validate(self) -> None:
        """Raise ValueError naming the field when the shape is impossible."""
        if self.width % self.heads:
            raise ValueError(f"model.width={self.width} is not divisible by model.heads={self.heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} (width/heads) must be even for rotary embeddings")
        if len(self.mrope_section) != 3 or min(self.mrope_section) < 0:
            raise ValueError(f"model.mrope_section={self.mrope_section} must be three non-negative ints (t, h, w)")
        if self.attn_backend not in ("auto", "sdpa", "sdpa_dense", "flash", "flex"):
            raise ValueError(f"model.attn_backend={self.attn_backend!r}: choose auto, sdpa, sdpa_dense, flash or flex")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"model.drop_path={self.drop_path} must be in [0, 1)")
        for name in ("num_layers", "width", "heads", "ffn", "text_width", "vocab_size", "patch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")


def default_mrope_section(head_dim: int) -> tuple[int, int, int]:
    """Smallest (t, h, w) sections whose interleave assigns slot i to t/h/w exactly by i % 3."""
    slots = head_dim // 2
    return tuple(len(range(axis, slots, 3)) for axis in range(3))


def _preset(**kw) -> ModelConfig:
    cfg = ModelConfig(**kw)
    if "mrope_section" not in kw:
        cfg.mrope_section = default_mrope_section(cfg.head_dim)
    return cfg


PRESETS: dict[str, ModelConfig] = {
    # Released configs of the authors (GENLIP_SPEC section 6).
    "l16": _preset(num_layers=24, width=1152, heads=16, ffn=2752, text_width=1024, vocab_size=QWEN3_VOCAB,
                   mrope_section=(8, 12, 12), drop_path=0.1),
    "so16": _preset(num_layers=27, width=1152, heads=16, ffn=3072, text_width=1152, vocab_size=QWEN3_VOCAB,
                    mrope_section=(12, 12, 12), drop_path=0.1),
    "g16": _preset(num_layers=40, width=1536, heads=16, ffn=4096, text_width=1024, vocab_size=QWEN3_VOCAB,
                   mrope_section=(16, 16, 16), drop_path=0.2),
    # The paper's Table 1 L/16 (D=1024, FFN=2816, Dh=64: 32 slots).
    "l16_paper": _preset(num_layers=24, width=1024, heads=16, ffn=2816, text_width=1024, vocab_size=QWEN3_VOCAB,
                         mrope_section=(11, 11, 10), drop_path=0.1),
    # ViT-B-sized point for scaling sweeps.
    "b16": _preset(num_layers=12, width=768, heads=12, ffn=2048, text_width=768, vocab_size=QWEN3_VOCAB,
                   drop_path=0.1),
    # Small presets for demos and tests (vocab is set from the tokenizer at run time).
    "small": _preset(num_layers=4, width=192, heads=6, ffn=512, text_width=128, vocab_size=4096),
    "tiny": _preset(num_layers=2, width=64, heads=4, ffn=128, text_width=48, vocab_size=1024),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """A fresh copy of preset `name` with `overrides` applied and validated."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise KeyError(f"unknown model field(s) {sorted(unknown)} for preset {name!r}")
    cfg = dataclasses.replace(PRESETS[name], **overrides)
    if "mrope_section" in overrides:
        cfg.mrope_section = tuple(overrides["mrope_section"])
    cfg.validate()
    return cfg


__all__ = ["ModelConfig", "PRESETS", "QWEN3_VOCAB", "default_mrope_section", "get_preset"]
