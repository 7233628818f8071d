"""GenLIP: one ViT that reads image patches, then predicts the caption with a language-modeling loss.

Each packed sample is `[image patches] [prompt] [caption] [end]` (no CLS, no BOS, no vision start/end
tokens, no absolute positions). Image tokens attend bidirectionally among themselves, text attends to
its sample's image and causally to its text; positions are interleaved 3-axis MRoPE restarting at each
sample. The loss is next-token cross-entropy on caption + end tokens; the LM head runs only where there
is a target. At deployment `features()` (final-LN patch features) is what an MLLM consumes.

Legend: B rows, S slots per row, N patches, L text slots, M targets, D width, E text width, V vocab
(local to the TP rank for the LM head).

Deliberate choices (see GENLIP_SPEC):
- Loss normalisation follows the reference: mean over the targets of each packed row, then mean over
  rows (rows without targets are left out).
- DropPath draws once per packed row, as in the reference.
- Padding slots attend only to themselves (keeps softmax finite); nothing real attends to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from genlip.model.attention import attend_all, make_attention, resolve_backend
from genlip.model.batch import Layout, PackedBatch, make_layout
from genlip.model.config import ModelConfig
from genlip.model.init import set_init
from genlip.model.kit import PlainKit
from genlip.model.layers import Block, KVCache, build_layer_norm
from genlip.model.rope import make_rope


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar: mean over rows of each row's mean target loss
    row_loss_sum: torch.Tensor  # [B] fp32 sum of target losses per row (detached)
    row_targets: torch.Tensor  # [B] number of targets per row


def _linear(in_f: int, out_f: int, std: float) -> nn.Linear:
    layer = nn.Linear(in_f, out_f)
    set_init(layer.weight, "normal", std)
    set_init(layer.bias, "const", 0.0)
    return layer


class GenLIP(nn.Module):
    def __init__(self, cfg: ModelConfig, kit=None):
        super().__init__()
        cfg.validate()
        kit = kit or PlainKit()
        self.cfg, self.kit = cfg, kit
        D, E, p = cfg.width, cfg.text_width, cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.channels, D, kernel_size=p, stride=p)
        set_init(self.patch_embed.weight, "normal", cfg.init_std)
        set_init(self.patch_embed.bias, "const", 0.0)
        self.tok_embed = kit.embedding(cfg.vocab_size, E, std=cfg.init_std)
        self.in_proj = _linear(E, D, cfg.init_std) if E != D else None
        self.blocks = nn.ModuleList(Block(cfg, kit) for _ in range(cfg.num_layers))
        self.ln_post = build_layer_norm(D, cfg.ln_eps)
        self.proj = _linear(D, E, cfg.init_std) if E != D else None
        self.lm_head = kit.column(E, cfg.vocab_size, bias=False, std=cfg.init_std)
        self.activation_checkpointing = False
        self.varlen_fn = None  # test hook: a stand-in for flash_attn_varlen_func

    # ---- pieces (pipeline stages call these too) -------------------------------------------------
    def layout(self, batch: PackedBatch) -> Layout:
        return make_layout(batch.segments, batch.tokens.shape[1], device=batch.tokens.device)

    def embed(self, batch: PackedBatch, layout: Layout) -> torch.Tensor:
        """[B, S, D]: patch embeddings at image slots, token embeddings at text slots, 0 at padding."""
        B, S = batch.tokens.shape
        w = self.patch_embed.weight
        pixels = batch.pixels.to(w.dtype)
        if batch.pixels.dtype == torch.uint8:  # loader output: normalise here (mean = std = 0.5)
            pixels = pixels * (2.0 / 255.0) - 1.0
        patches = F.linear(pixels, w.flatten(1), self.patch_embed.bias)
        text = self.tok_embed(batch.tokens.reshape(-1)[layout.text_index])
        if self.in_proj is not None:
            text = self.in_proj(text)
        x = patches.new_zeros(B * S, self.cfg.width)
        x = x.index_copy(0, layout.image_index, patches).index_copy(0, layout.text_index, text.to(x.dtype))
        return x.view(B, S, -1)

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype):
        c = self.cfg
        return make_rope(position_ids, head_dim=c.head_dim, section=c.mrope_section, theta=c.rope_theta,
                         dtype=dtype)

    def attention(self, layout: Layout, device) -> callable:
        backend = resolve_backend(self.cfg.attn_backend, device)
        if self.varlen_fn is not None:
            backend = "flash"
        return make_attention(layout, backend, varlen_fn=self.varlen_fn)

    def run_blocks(self, x, rope, attend, blocks=None, caches=None):
        for i, block in enumerate(self.blocks if blocks is None else blocks):
            cache = caches[i] if caches is not None else None
            if self.activation_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, rope, attend, cache, use_reentrant=False)
            else:
                x = block(x, rope, attend, cache)
        return x

    def loss(self, h: torch.Tensor, batch: PackedBatch, layout: Layout) -> LossOutput:
        """Caption/end-token loss from final hidden states h [B, S, D] (before ln_post)."""
        B = h.shape[0]
        sel = self.ln_post(h.reshape(-1, h.shape[-1])[layout.target_index])  # [M, D]
        logits = self.lm_head(self.proj(sel) if self.proj is not None else sel)  # [M, V(/tp)]
        targets = batch.tokens.reshape(-1)[layout.target_index + 1]
        tok_loss = self.kit.cross_entropy(logits, targets)
        row_sum = tok_loss.new_zeros(B).index_add(0, layout.target_row, tok_loss)
        row_cnt = torch.bincount(layout.target_row, minlength=B)
        has = row_cnt > 0
        loss = (row_sum[has] / row_cnt[has]).mean() if bool(has.any()) else tok_loss.sum()
        return LossOutput(loss, row_sum.detach(), row_cnt)

    # ---- entry points ------------------------------------------------------------------------------
    def forward(self, batch: PackedBatch) -> LossOutput:
        layout = self.layout(batch)
        x = self.embed(batch, layout)
        rope = self.rope(layout.position_ids, x.dtype)
        x = self.run_blocks(x, rope, self.attention(layout, x.device))
        return self.loss(x, batch, layout)

    def hidden(self, batch: PackedBatch) -> tuple[torch.Tensor, Layout]:
        """ln_post output [B, S, D] at every slot, with the layout."""
        layout = self.layout(batch)
        x = self.embed(batch, layout)
        x = self.run_blocks(x, self.rope(layout.position_ids, x.dtype), self.attention(layout, x.device))
        return self.ln_post(x), layout

    def features(self, batch: PackedBatch) -> torch.Tensor:
        """[N, D] final-LN patch features, in the order of `batch.pixels` (what an MLLM consumes)."""
        h, layout = self.hidden(batch)
        return h.reshape(-1, h.shape[-1])[layout.image_index]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits from ln_post features [..., D]."""
        return self.kit.gather_vocab(self.lm_head(self.proj(h) if self.proj is not None else h))

    def prefill(self, batch: PackedBatch, caches: list[KVCache]) -> torch.Tensor:
        """Run image + prompt of one sample per row, filling `caches`; logits [B, V] at each row's last slot."""
        layout = self.layout(batch)
        x = self.embed(batch, layout)
        x = self.run_blocks(x, self.rope(layout.position_ids, x.dtype), self.attention(layout, x.device),
                            caches=caches)
        return self.logits(self.ln_post(x[:, -1]))

    def decode(self, tokens: torch.Tensor, position: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
        """One text token per row: tokens [B], MRoPE position [B] (same on all axes); logits [B, V]."""
        x = self.tok_embed(tokens[:, None])
        if self.in_proj is not None:
            x = self.in_proj(x)
        pos = position.view(1, -1, 1).expand(3, -1, 1)
        x = self.run_blocks(x, self.rope(pos, x.dtype), attend_all, caches=caches)
        return self.logits(self.ln_post(x[:, -1]))


def build_model(cfg: ModelConfig, *, kit=None, seed: int | None = 0, device=None, dtype=None) -> GenLIP:
    """A GenLIP with the reference initialisation drawn from `seed` (layout-independent)."""
    from genlip.model.init import init_weights

    model = GenLIP(cfg, kit)
    if seed is not None:
        init_weights(model, seed)
    return model.to(device=device, dtype=dtype)
