"""What a job will do and whether it fits, before it is submitted: batch, steps, samples and a memory
estimate per GPU (weights, gradients and optimizer state under the ZeRO stage and TP/PP split, plus
activations).

Memory model (bytes per parameter on one GPU, P = parameters held by the rank, d = dp):
  bf16: weights 2P, gradients 2P, fp32 master + Adam moments 12P; ZeRO-1 divides the 12P by d,
  ZeRO-2 also the gradients, ZeRO-3 also the weights. fp32: weights 4P, gradients 4P, Adam 8P.
Activations per rank (Megatron's estimate, flash attention, no sequence parallelism), for L/pp layers of
B rows x S slots x D width: with activation checkpointing 2*S*B*D per layer kept plus one layer's working
set S*B*D*(10 + 24/tp); without, S*B*D*(10 + 24/tp) per layer; plus fp32 logits at the caption targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # NOTE: nothing heavy at import: genlip-submit checks its options before torch loads
    from genlip.config import Config
    from genlip.model.config import ModelConfig

GIB = 2**30


@dataclass
class Plan:
    world: int
    dp: int
    accum: int
    global_rows: int
    samples_per_row: float
    samples_per_step: float
    steps: int
    params_per_rank: int
    memory_gib: dict

    @property
    def total_gib(self) -> float:
        return sum(self.memory_gib.values())


def estimate(cfg: Config, m: ModelConfig, *, world: int, avg_tokens_per_sample: float,
             fill: float = 0.99, caption_fraction: float = 0.25) -> Plan:
    from genlip.info import count_params

    p, t = cfg.parallel, cfg.train
    dp = world // (p.tp * p.pp)
    counts = count_params(m)
    per_block = (counts.trunk - (m.patch_dim * m.width + m.width) - 2 * m.width) // m.num_layers
    text = counts.text
    # The first stage holds the embeddings, the last the head: take the larger end stage.
    blocks_per_stage = -(-m.num_layers // p.pp)
    end_extra = text if p.pp == 1 else max(m.vocab_size * m.text_width, text - m.vocab_size * m.text_width)
    params = (blocks_per_stage * per_block + end_extra) // p.tp + m.patch_dim * m.width
    bf16 = t.dtype == "bf16"
    w_b, g_b, o_b = (2, 2, 12) if bf16 else (4, 4, 8)
    z = p.zero_stage
    mem = {
        "weights": params * w_b / (dp if z >= 3 else 1),
        "gradients": params * g_b / (dp if z >= 2 else 1),
        "optimizer": params * o_b / (dp if z >= 1 else 1),
    }
    S, B, D = cfg.data.seq_len, t.micro_batch_rows, m.width
    act_b = 2 if bf16 else 4
    layer = S * B * D * (10 + 24 / p.tp) * act_b / 2
    if t.activation_checkpointing:
        mem["activations"] = blocks_per_stage * 2 * S * B * D * act_b / 2 + layer
    else:
        mem["activations"] = blocks_per_stage * layer
    in_flight = min(p.pp, t.global_batch_rows // (dp * B)) if p.pp > 1 else 1  # 1F1B keeps <= pp micro-batches
    mem["activations"] *= in_flight
    mem["logits"] = S * B * caption_fraction * m.vocab_size / p.tp * 4 * 2  # fp32 logits and their gradient
    samples_per_row = S * fill / avg_tokens_per_sample
    samples_per_step = samples_per_row * t.global_batch_rows
    return Plan(world=world, dp=dp, accum=t.global_batch_rows // (dp * B), global_rows=t.global_batch_rows,
                samples_per_row=samples_per_row, samples_per_step=samples_per_step,
                steps=int(-(-t.total_samples // samples_per_step)), params_per_rank=int(params),
                memory_gib={k: v / GIB for k, v in mem.items()})


def describe(plan: Plan, cfg: Config) -> str:
    p = cfg.parallel
    mem = ", ".join(f"{k} {v:.1f}" for k, v in plan.memory_gib.items())
    return (f"layout: {plan.world} GPUs = tp {p.tp} x pp {p.pp} x dp {plan.dp}, ZeRO-{p.zero_stage}, "
            f"{cfg.train.dtype}\n"
            f"batch: {plan.global_rows} rows of {cfg.data.seq_len} slots per step ({cfg.train.micro_batch_rows} per "
            f"micro-batch x {plan.accum} accumulation x {plan.dp} dp) ~ {plan.samples_per_step:,.0f} samples "
            f"({plan.samples_per_row:.1f} per row)\n"
            f"schedule: {cfg.train.total_samples:,.0f} samples ~ {plan.steps:,} steps\n"
            f"memory per GPU (estimate): {plan.total_gib:.1f} GiB = {mem}; {plan.params_per_rank:,} parameters")


# (tp, pp, zero_stage) in the order a layout is tried: plain data parallelism first, then ZeRO sharding,
# then tensor parallelism inside a node, then pipeline stages (each step costs more communication).
LAYOUTS = ((1, 1, 1), (1, 1, 2), (1, 1, 3), (2, 1, 1), (4, 1, 1), (8, 1, 1), (8, 2, 1), (8, 4, 1))


def choose_layout(cfg: Config, *, world: int, gpus_per_node: int, gpu_memory_gib: float, vocab_size: int | None,
                  avg_tokens_per_sample: float) -> tuple[list[str], Plan] | tuple[None, str]:
    """The first of LAYOUTS that validates for `world` ranks and fits `gpu_memory_gib` (tp within a node):
    (its parallel.* overrides, its plan), or (None, why none did)."""
    import copy

    from genlip.config import ConfigError, validate

    reasons = []
    for tp, pp, zero in LAYOUTS:
        if gpus_per_node and tp > gpus_per_node:
            continue
        trial = copy.deepcopy(cfg)
        trial.parallel.tp, trial.parallel.pp, trial.parallel.zero_stage = tp, pp, zero
        try:
            m = validate(trial, world_size=world, vocab_size=vocab_size)
        except ConfigError as e:
            reasons.append(f"tp {tp} pp {pp} ZeRO-{zero}: {e}")
            continue
        plan = estimate(trial, m, world=world, avg_tokens_per_sample=avg_tokens_per_sample)
        if gpus_per_node and plan.total_gib > gpu_memory_gib:
            reasons.append(f"tp {tp} pp {pp} ZeRO-{zero}: {plan.total_gib:.1f} GiB per GPU > {gpu_memory_gib:g}")
            continue
        return [f"parallel.tp={tp}", f"parallel.pp={pp}", f"parallel.zero_stage={zero}"], plan
    return None, "; ".join(reasons[-2:]) or "no layout tried"
