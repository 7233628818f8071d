"""Pipeline parallelism with DeepSpeed's `PipelineModule`, built from the model's own pieces.

Layers: [embed stage] + num_layers x [block] + [head stage], the same `Embed`, `Block` and `Head`
classes as the single-process `GenLIP` (no second model). Between stages only tensors travel:
(hidden [B, S, D], tokens [B, S], segments [B, K, 4]); each stage rebuilds the packed layout, RoPE and
attention indices from the small segment table (cached by content), never an [S, S] mask. The head
stage computes the loss itself, so DeepSpeed's `loss_fn` passes it through.

Parameter names inside a PipelineModule are `{layer index}.{name}`; `canonical_name` maps them to the
single-process names (embed.*, blocks.i.*, head.*) used for initialisation and checkpoint export
(it lives in genlip.weights.deepspeed_files, which reads pipeline checkpoints offline).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from deepspeed.pipe import LayerSpec, PipelineModule
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

from genlip.model.batch import make_layout
from genlip.model.config import ModelConfig
from genlip.model.genlip import Embed, Head, block_context
from genlip.model.layers import Block


class _Context:
    """Per-stage cache of (layout, rope, attend) keyed by the segment table's content."""

    def __init__(self, cfg: ModelConfig, size: int = 4):
        self.cfg, self.size = cfg, size
        self.entries: OrderedDict = OrderedDict()

    def get(self, segments: torch.Tensor, seq_len: int, dtype: torch.dtype):
        key = (segments.detach().cpu().numpy().tobytes(), tuple(segments.shape), seq_len, dtype)
        if key not in self.entries:
            layout = make_layout(segments, seq_len, device=segments.device)
            self.entries[key] = (layout, *block_context(self.cfg, layout, dtype))
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return self.entries[key]


class PipeEmbed(Embed):
    def __init__(self, cfg, kit, ctx: _Context):
        super().__init__(cfg, kit)
        self.ctx = ctx

    def forward(self, inputs):
        pixels, tokens, segments = inputs
        layout = self.ctx.get(segments, tokens.shape[1], self.patch_embed.weight.dtype)[0]
        return super().forward(pixels, tokens, layout), tokens, segments


class PipeBlock(Block):
    def __init__(self, cfg, kit, ctx: _Context):
        super().__init__(cfg, kit)
        self.ctx = ctx

    def forward(self, inputs):
        x, tokens, segments = inputs
        _, rope, attend = self.ctx.get(segments, tokens.shape[1], x.dtype)
        return super().forward(x, rope, attend), tokens, segments


class PipeHead(Head):
    def __init__(self, cfg, kit, ctx: _Context):
        super().__init__(cfg, kit)
        self.ctx = ctx

    def forward(self, inputs):
        x, tokens, segments = inputs
        layout = self.ctx.get(segments, tokens.shape[1], x.dtype)[0]
        return self.loss(x, tokens, layout).loss


def _pass_loss(outputs, labels):
    return outputs


def build_pipeline_model(cfg: ModelConfig, kit, *, pp: int, tp: int, dp: int, partition: str = "uniform",
                         checkpoint_interval: int = 0) -> PipelineModule:
    """A PipelineModule over megatron's rank order (tp fastest, then dp, then pp)."""
    ctx = _Context(cfg)
    layers = [LayerSpec(PipeEmbed, cfg, kit, ctx)]
    layers += [LayerSpec(PipeBlock, cfg, kit, ctx) for _ in range(cfg.num_layers)]
    layers += [LayerSpec(PipeHead, cfg, kit, ctx)]
    topology = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    return PipelineModule(layers=layers, topology=topology, loss_fn=_pass_loss,
                          partition_method="uniform" if partition == "uniform" else "parameters",
                          activation_checkpoint_interval=checkpoint_interval,
                          # NOTE: only blocks: DeepSpeed's reentrant checkpoint would cut the embed stage's
                          # gradients, since its inputs (pixels uint8, token ids) cannot require grad.
                          checkpointable_layers=["PipeBlock"])


def pipeline_batch(batch) -> tuple:
    """(inputs, labels) in the form DeepSpeed's pipeline engine loads (labels are unused)."""
    return (batch.pixels, batch.tokens, batch.segments.long()), torch.zeros(1)
