"""Resume under another layout: load a universal training state (genlip.weights.universal) into a live
DeepSpeed engine of any (tp, pp, dp, ZeRO) layout.

Each rank takes, for every parameter it holds, the full tensor of that name, keeps its tensor-parallel
slice (`shard_tensor`, the same split the model was built with) and hands it to DeepSpeed's fragment API
(`safe_set_full_fp32_param` / `safe_set_full_optimizer_state`), which writes the part of the data-parallel
partition this rank owns: ZeRO-1/2 and the bf16 optimizer through `_hp_mapping`, ZeRO-3 through its
partitioned optimizer. Without ZeRO in fp32 the parameters are the masters and torch's AdamW state is set
directly. The working (low-precision) weights are set too: a replica's copy for ZeRO-0/1/2, the partition
for ZeRO-3 (gathered, modified, re-partitioned). Adam's step count (its bias correction) is restored in
every state entry.
"""

from __future__ import annotations

import torch
from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

from genlip.model.init import shard_tensor
from genlip.weights.universal import Universal


@torch.no_grad()
def load_universal_into(engine, universal: Universal, *, name_map=None) -> int:
    """Weights, fp32 masters and Adam moments of `universal` into `engine`; returns the parameters set."""
    import deepspeed

    params = list(engine.module.named_parameters())
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)  # ZeRO / bf16 wrappers hold the torch one
    zero3 = any(hasattr(p, "ds_id") for _, p in params)
    # Adam creates its state at the first step; create it now (zeros, filled below) for every tensor the
    # torch optimizer steps (flat fp32 partitions under ZeRO / bf16, the parameters themselves otherwise).
    stepped = [t for group in base.param_groups for t in group["params"]]
    stepped += list(getattr(engine.optimizer, "fp32_partitioned_groups_flat", []))  # ZeRO-3 swaps these in at step
    for t in stepped:
        if t not in base.state or "exp_avg" not in base.state[t]:
            base.state[t] = {"step": torch.tensor(float(universal.adam_step)), "exp_avg": torch.zeros_like(t),
                             "exp_avg_sq": torch.zeros_like(t)}
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:  # ZeRO-1/2 and bf16 link each parameter to its Adam state fragments
        link()
    for name, p in params:
        canonical = name_map(name) if name_map else name
        local = {key: shard_tensor(universal.get(key, canonical), p) for key in ("fp32", "exp_avg", "exp_avg_sq")}
        if zero3:
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                if torch.distributed.get_rank() == 0:
                    p.data.copy_(local["fp32"].to(p.dtype))
        else:
            p.data.copy_(local["fp32"].to(device=p.device, dtype=p.dtype))
        if zero3 or hasattr(p, "_hp_mapping"):
            safe_set_full_fp32_param(p, local["fp32"].to(p.device))
            for key in ("exp_avg", "exp_avg_sq"):
                safe_set_full_optimizer_state(p, local[key].to(p.device), key)
        else:  # fp32 without ZeRO: the parameter is the master; torch's AdamW state is per parameter
            for key in ("exp_avg", "exp_avg_sq"):
                base.state[p][key].copy_(local[key])
    for state in base.state.values():
        state["step"] = torch.tensor(float(universal.adam_step))
    return len(params)
