"""GenLIP: one ViT that reads image patches, then predicts the caption with a language-modeling loss.

Each packed sample is `[image patches] [prompt] [caption] [end]` (no CLS, no BOS, no vision start/end
tokens, no absolute positions). Image tokens attend bidirectionally among themselves, text attends to
its sample's image and causally to its text; positions are interleaved 3-axis MRoPE restarting at each
sample. The loss is next-token cross-entropy on caption + end tokens; the LM head runs only where there
is a target. At deployment `features()` (final-LN patch features) is what an MLLM consumes.

Legend: B rows, S slots per row, N patches, L text slots, M targets, D width, E text width, V vocab
(local to the TP rank for the LM head).

Deliberate choices (see GENLIP_SPEC):
- Loss normalisation follows the reference: the mean over every target of the micro-batch (a token
  mean across its rows, not a mean of per-row means). Gradient accumulation and data parallelism then
  average the micro-batch means (docs/ARCHITECTURE.md, "Loss normalisation").
- DropPath draws once per packed row, as in the reference.
- Padding slots attend only to themselves (keeps softmax finite); nothing real attends to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from genlip.model.attention import FromBuckets, RowMap, ToBuckets, attend_all, make_attention, resolve_backend
from genlip.model.batch import Layout, PackedBatch, make_layout
from genlip.model.config import ModelConfig
from genlip.model.init import set_init
from genlip.model.kit import PlainKit
from genlip.model.layers import Block, KVCache, build_layer_norm
from genlip.model.rope import make_rope


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar: mean over every target of the micro-batch (0 with no targets)
    row_loss_sum: torch.Tensor  # [B] fp32 sum of target losses per row (detached)
    row_targets: torch.Tensor  # [B] number of targets per row


def _linear(in_f: int, out_f: int, std: float) -> nn.Linear:
    layer = nn.Linear(in_f, out_f)
    set_init(layer.weight, "normal", std)
    set_init(layer.bias, "const", 0.0)
    return layer


class Embed(nn.Module):
    """Patch embedding (Conv2d weights, applied as a matmul on flattened patches) and token embedding."""

    def __init__(self, cfg: ModelConfig, kit):
        super().__init__()
        D, E, p = cfg.width, cfg.text_width, cfg.patch_size
        self.width = D
        self.patch_embed = nn.Conv2d(cfg.channels, D, kernel_size=p, stride=p)
        set_init(self.patch_embed.weight, "normal", cfg.init_std)
        set_init(self.patch_embed.bias, "const", 0.0)
        self.tok_embed = kit.embedding(cfg.vocab_size, E, std=cfg.init_std)
        self.in_proj = _linear(E, D, cfg.init_std) if E != D else None

    def text(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_embed(tokens)
        return self.in_proj(x) if self.in_proj is not None else x

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor, layout: Layout) -> torch.Tensor:
        """[B, S, D]: patch embeddings at image slots, token embeddings at text slots, 0 at padding."""
        B, S = tokens.shape
        w = self.patch_embed.weight
        px = pixels.to(w.dtype)
        if pixels.dtype == torch.uint8:  # loader output: normalise here (mean = std = 0.5)
            px = px * (2.0 / 255.0) - 1.0
        patches = F.linear(px, w.flatten(1), self.patch_embed.bias)
        text = self.text(tokens.reshape(-1)[layout.text_index])
        x = patches.new_zeros(B * S, self.width)
        x = x.index_copy(0, layout.image_index, patches).index_copy(0, layout.text_index, text.to(x.dtype))
        return x.view(B, S, -1)


class Head(nn.Module):
    """Final LayerNorm (the deployed feature), text projection and the untied LM head."""

    def __init__(self, cfg: ModelConfig, kit):
        super().__init__()
        D, E = cfg.width, cfg.text_width
        self.kit = kit
        self.ln_post = build_layer_norm(D, cfg.ln_eps)
        self.proj = _linear(D, E, cfg.init_std) if E != D else None
        self.lm_head = kit.column(E, cfg.vocab_size, bias=False, std=cfg.init_std)

    def local_logits(self, features: torch.Tensor) -> torch.Tensor:
        """LM head on ln_post features [..., D]; the vocab dim is this TP rank's slice."""
        return self.lm_head(self.proj(features) if self.proj is not None else features)

    def loss(self, h: torch.Tensor, tokens: torch.Tensor, layout: Layout) -> LossOutput:
        """Caption/end-token loss from final hidden states h [B, S, D] (before ln_post)."""
        B = h.shape[0]
        logits = self.local_logits(self.ln_post(h.reshape(-1, h.shape[-1])[layout.target_index]))  # [M, V(/tp)]
        targets = tokens.reshape(-1)[layout.target_index + 1]
        tok_loss = self.kit.cross_entropy(logits, targets)
        row_sum = tok_loss.new_zeros(B).index_add(0, layout.target_row, tok_loss)
        row_cnt = torch.bincount(layout.target_row, minlength=B)
        loss = tok_loss.sum() / max(len(targets), 1)
        return LossOutput(loss, row_sum.detach(), row_cnt)


class GenLIP(nn.Module):
    def __init__(self, cfg: ModelConfig, kit=None):
        super().__init__()
        cfg.validate()
        kit = kit or PlainKit()
        self.cfg, self.kit = cfg, kit
        self.embed = Embed(cfg, kit)
        self.blocks = nn.ModuleList(Block(cfg, kit) for _ in range(cfg.num_layers))
        self.head = Head(cfg, kit)
        self.activation_checkpointing = False
        self.varlen_fn = None  # test hook: a stand-in for flash_attn_varlen_func

    # ---- pieces (pipeline stages use the same ones) ---------------------------------------------
    def layout(self, batch: PackedBatch) -> Layout:
        return make_layout(batch.segments, batch.tokens.shape[1], device=batch.tokens.device)

    def context(self, layout: Layout, dtype: torch.dtype):
        """(rope, attend) shared by all blocks of one forward."""
        return block_context(self.cfg, layout, dtype, varlen_fn=self.varlen_fn)

    def run_blocks(self, x, rope, attend, caches=None):
        for i, block in enumerate(self.blocks):
            cache = caches[i] if caches is not None else None
            if self.activation_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, rope, attend, cache, use_reentrant=False)
            else:
                x = block(x, rope, attend, cache)
        return x

    def trunk(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        """The blocks over embedded rows x [B, S, D]. With the CPU span attention (`sdpa`) they run on the
        real slots alone, [1, T, D]: nothing real depends on a padding slot, so the linear layers skip the
        rows' unfilled tails (benchmarks/attention_cost.py); padding slots come back as zeros (nothing
        reads them)."""
        padded = self.varlen_fn is not None or resolve_backend(self.cfg.attn_backend, x.device) != "sdpa"
        if padded or len(layout.real_index) == 0:  # (no real slot at all: the padded rows, each sees itself)
            return self.run_blocks(x, *self.context(layout, x.dtype))
        B, S, D = x.shape
        take = layout.real_index  # [T] slot of each real token
        c = self.cfg
        rope = make_rope(layout.position_ids.reshape(3, 1, B * S)[:, :, take], head_dim=c.head_dim,
                         section=c.mrope_section, theta=c.rope_theta, dtype=x.dtype)
        attend = make_attention(layout, "sdpa", unpadded=True)
        attend.rows = (B, take // S)  # DropPath: one draw per packed row, as on padded rows
        real_slots = RowMap([take], [take], B * S, take)
        (real,) = ToBuckets.apply(x.reshape(B * S, D), real_slots)
        real = self.run_blocks(real[None], rope, attend)
        return FromBuckets.apply(real_slots, None, (D,), real[0]).view(B, S, D)

    # ---- entry points ------------------------------------------------------------------------------
    def forward(self, batch: PackedBatch) -> LossOutput:
        layout = self.layout(batch)
        x = self.embed(batch.pixels, batch.tokens, layout)
        return self.head.loss(self.trunk(x, layout), batch.tokens, layout)

    def hidden(self, batch: PackedBatch) -> tuple[torch.Tensor, Layout]:
        """ln_post output [B, S, D] at every slot, with the layout."""
        layout = self.layout(batch)
        x = self.embed(batch.pixels, batch.tokens, layout)
        return self.head.ln_post(self.trunk(x, layout)), layout

    def features(self, batch: PackedBatch) -> torch.Tensor:
        """[N, D] final-LN patch features, in the order of `batch.pixels` (what an MLLM consumes)."""
        h, layout = self.hidden(batch)
        return h.reshape(-1, h.shape[-1])[layout.image_index]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits from ln_post features [..., D]."""
        return self.kit.gather_vocab(self.head.local_logits(features))

    def prefill(self, batch: PackedBatch, caches: list[KVCache]) -> torch.Tensor:
        """Run image + prompt of one sample per row, filling `caches`; logits [B, V] at each row's last slot."""
        layout = self.layout(batch)
        x = self.embed(batch.pixels, batch.tokens, layout)
        x = self.run_blocks(x, *self.context(layout, x.dtype), caches=caches)
        return self.logits(self.head.ln_post(x[:, -1]))

    def decode(self, tokens: torch.Tensor, position: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
        """One text token per row: tokens [B], MRoPE position [B] (same on all axes); logits [B, V]."""
        x = self.embed.text(tokens[:, None])
        pos = position.view(1, -1, 1).expand(3, -1, 1)
        c = self.cfg
        rope = make_rope(pos, head_dim=c.head_dim, section=c.mrope_section, theta=c.rope_theta, dtype=x.dtype)
        x = self.run_blocks(x, rope, attend_all, caches=caches)
        return self.logits(self.head.ln_post(x[:, -1]))


def block_context(cfg: ModelConfig, layout: Layout, dtype: torch.dtype, *, varlen_fn=None):
    """(rope cos/sin, attention function) for the blocks of one forward pass over `layout`."""
    rope = make_rope(layout.position_ids, head_dim=cfg.head_dim, section=cfg.mrope_section, theta=cfg.rope_theta,
                     dtype=dtype)
    backend = "flash" if varlen_fn is not None else resolve_backend(cfg.attn_backend, layout.sample_id.device)
    return rope, make_attention(layout, backend, varlen_fn=varlen_fn)


def build_model(cfg: ModelConfig, *, kit=None, seed: int | None = 0, device=None, dtype=None) -> GenLIP:
    """A GenLIP with the reference initialisation drawn from `seed` (layout-independent)."""
    from genlip.model.init import init_weights

    model = GenLIP(cfg, kit)
    if seed is not None:
        init_weights(model, seed)
    return model.to(device=device, dtype=dtype)
