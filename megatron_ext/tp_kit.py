"""Tensor-parallel layer kit on megatron-core layers.

Same interface as `genlip.model.kit.PlainKit`. Megatron's layers are subclassed, not wrapped, so
parameter names stay `weight` / `bias` and a full (single-process) state dict maps onto them by name.
Weights are not initialised by megatron (`perform_initialization=False`): `genlip.model.init` draws the
full tensor and keeps this rank's slice, using the `tp_split` metadata set here.

Fused weights use megatron's `stride` (the number of logical blocks along the output dim): rank r holds
slice r of every block, so q/gate and gate/up halves stay matched on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.model_parallel_config import ModelParallelConfig
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    set_tensor_model_parallel_attributes,
    vocab_parallel_cross_entropy,
)

from genlip.model.init import set_init, set_tp_split
from genlip.model.kit import xavier_or_normal
from megatron_ext.parallel_state import tp_group, tp_rank, tp_world_size


def _noop_init(weight):
    return weight


def _as_3d(x: torch.Tensor) -> torch.Tensor:
    # megatron's linear autograd functions expect [s, b, h]; any leading dims fold into s.
    return x.reshape(-1, 1, x.shape[-1])


class _NoExtraState:
    """megatron's linears save an `_extra_state` entry (None: a Transformer Engine hook) in every state dict;
    DeepSpeed's universal-checkpoint converter cannot handle None tensors, so ours save none. On load,
    megatron's pre-hook adds the entry back and checkpoints written before hold it: it is not unexpected."""

    get_extra_state = torch.nn.Module.get_extra_state
    set_extra_state = torch.nn.Module.set_extra_state

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if prefix + "_extra_state" in unexpected_keys:
            unexpected_keys.remove(prefix + "_extra_state")


class _Column(_NoExtraState, ColumnParallelLinear):
    def forward(self, x):
        out, _ = super().forward(_as_3d(x))
        return out.view(*x.shape[:-1], out.shape[-1])


class _Row(_NoExtraState, RowParallelLinear):
    def forward(self, x):
        out, _ = super().forward(_as_3d(x))
        return out.view(*x.shape[:-1], out.shape[-1])


class TensorParallelKit:
    """Column/row-parallel linears, vocab-parallel embedding and cross-entropy over the TP group."""

    def __init__(self, *, params_dtype: torch.dtype = torch.float32):
        self.tp, self.tp_rank = tp_world_size(), tp_rank()
        self.config = ModelParallelConfig(
            tensor_model_parallel_size=self.tp,
            use_cpu_initialization=not torch.cuda.is_available(),
            perform_initialization=False,
            params_dtype=params_dtype,
        )

    def _split(self, param, dim: int, stride: int = 1):
        # megatron's own marks (it sets them only when it initialises): DeepSpeed's gradient-norm and
        # clipping read `tensor_model_parallel` to count split parameters on every TP rank.
        if not hasattr(param, "tensor_model_parallel"):  # biases already carry them
            set_tensor_model_parallel_attributes(param, True, dim, stride)
        return set_tp_split(param, dim=dim, stride=stride, rank=self.tp_rank, world=self.tp)

    def column(self, in_features, out_features, *, bias=True, init="normal", std=0.02, chunks=1):
        layer = _Column(in_features, out_features, config=self.config, init_method=_noop_init, bias=bias,
                        gather_output=False, stride=chunks, skip_bias_add=False)
        xavier_or_normal(self._split(layer.weight, 0, chunks), init, std, (out_features, in_features))
        if bias:
            set_init(self._split(layer.bias, 0, chunks), "const", 0.0)
        return layer

    def row(self, in_features, out_features, *, bias=True, init="normal", std=0.02):
        layer = _Row(in_features, out_features, config=self.config, init_method=_noop_init, bias=bias,
                     input_is_parallel=True, skip_bias_add=False)
        xavier_or_normal(self._split(layer.weight, 1), init, std, (out_features, in_features))
        if bias:
            set_init(layer.bias, "const", 0.0)  # added after the all-reduce: replicated
        return layer

    def embedding(self, num, dim, *, std=0.02):
        emb = VocabParallelEmbedding(num, dim, init_method=_noop_init, config=self.config)
        set_init(self._split(emb.weight, 0), "normal", std)
        return emb

    def cross_entropy(self, logits, targets, loss_mask=None):
        # NOTE: megatron's kernel works on [s, b, v] and edits its input in place; float() copies bf16.
        loss = vocab_parallel_cross_entropy(_as_3d(logits.float()), targets.view(-1, 1)).view(-1)
        return loss if loss_mask is None else loss * loss_mask

    @torch.no_grad()
    def gather_vocab(self, logits):
        # For decoding and evaluation only (no autograd). megatron's gather_from_tensor_model_parallel_region
        # allocates on the current CUDA device, so a plain all_gather keeps this usable on CPU.
        if self.tp == 1:
            return logits
        parts = [torch.empty_like(logits) for _ in range(self.tp)]
        dist.all_gather(parts, logits.contiguous(), group=tp_group())
        return torch.cat(parts, dim=-1)
