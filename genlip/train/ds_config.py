"""The DeepSpeed JSON, generated from our config (never written by hand) and saved with the run."""

from __future__ import annotations

import torch

from genlip.config import Config


def build_ds_config(cfg: Config, *, dp: int) -> dict:
    t, o = cfg.train, cfg.optim
    accum = t.global_batch_rows // (dp * t.micro_batch_rows)
    adam = {"lr": o.lr, "betas": list(o.betas), "eps": o.eps, "weight_decay": o.weight_decay}
    if not torch.cuda.is_available():
        adam["torch_adam"] = True  # otherwise DeepSpeed JIT-builds a CPU Adam (~45 s)
    ds = {
        "train_micro_batch_size_per_gpu": t.micro_batch_rows,
        "gradient_accumulation_steps": accum,
        "train_batch_size": t.global_batch_rows,
        "gradient_clipping": o.grad_clip,
        "optimizer": {"type": "AdamW", "params": adam},
        # With one data-parallel rank there is nothing to reduce or partition: contiguous gradient buffers
        # are only a copy of every gradient each step (an estimate: about 3% of a `small` CPU step in one
        # in-process A/B, within its noise).
        "zero_optimization": {"stage": cfg.parallel.zero_stage, **({"contiguous_gradients": False} if dp == 1 else {})},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if t.dtype == "bf16":
        # check_grad_overflow: a step whose gradient norm is not finite is skipped (counted by DeepSpeed).
        ds["bf16"] = {"enabled": True, "check_grad_overflow": True}
    return ds
