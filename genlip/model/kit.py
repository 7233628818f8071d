"""The layer kit: the only place the model gets its parallelisable layers from.

The model asks for "column" layers (output features may be split over tensor-parallel ranks), "row"
layers (input features split, output reduced), a vocabulary embedding and a cross-entropy over
(possibly split) vocabulary logits. `PlainKit` builds single-device torch layers; the tensor-parallel
kit in `megatron_ext` builds megatron-core layers with the same parameter names, shapes (per rank) and
init rules, so one model class serves both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genlip.model.init import set_init, set_tp_plan


def xavier_or_normal(param: nn.Parameter, init: str, std: float, fan: tuple[int, int]):
    if init == "xavier":
        return set_init(param, "xavier", fan=fan)
    return set_init(param, "normal", std)


class PlainKit:
    """Single-device layers (the default)."""

    tp = 1
    tp_rank = 0

    def column(self, in_features: int, out_features: int, *, bias: bool = True, init: str = "normal",
               std: float = 0.02, chunks: int = 1) -> nn.Module:
        """y = x W^T + b; with TP each rank gets `1/tp` of every one of the `chunks` output blocks."""
        layer = nn.Linear(in_features, out_features, bias=bias)
        xavier_or_normal(set_tp_plan(layer.weight, dim=0, stride=chunks), init, std, (out_features, in_features))
        if bias:
            set_init(set_tp_plan(layer.bias, dim=0, stride=chunks), "const", 0.0)
        return layer

    def row(self, in_features: int, out_features: int, *, bias: bool = True, init: str = "normal",
            std: float = 0.02) -> nn.Module:
        """y = x W^T + b; with TP the input features are split and the output summed over ranks."""
        layer = nn.Linear(in_features, out_features, bias=bias)
        xavier_or_normal(set_tp_plan(layer.weight, dim=1), init, std, (out_features, in_features))
        if bias:
            set_init(layer.bias, "const", 0.0)  # added after the reduction: replicated
        return layer

    def embedding(self, num: int, dim: int, *, std: float = 0.02) -> nn.Module:
        emb = nn.Embedding(num, dim)
        set_init(set_tp_plan(emb.weight, dim=0), "normal", std)
        return emb

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor,
                      loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token loss in fp32, multiplied by `loss_mask` when given."""
        loss = F.cross_entropy(logits.float(), targets, reduction="none")
        return loss if loss_mask is None else loss * loss_mask

    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits from this rank's slice (identity here)."""
        return logits
