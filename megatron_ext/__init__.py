"""The only package that imports megatron.core: tensor-parallel layer adapters, vocab-parallel loss,
parallel-state setup and the CPU shims. Adapters return plain tensors and carry the same parameter
names, init rules and split metadata as `genlip.model.kit.PlainKit`'s layers."""

from megatron_ext.parallel_state import destroy_parallel, init_parallel, tp_group, tp_rank, tp_world_size
from megatron_ext.mpu import MegatronMpu, assert_groups_match, dp_rank, dp_world_size, pp_rank
from megatron_ext.tp_kit import TensorParallelKit

__all__ = ["MegatronMpu", "TensorParallelKit", "assert_groups_match", "dp_rank", "dp_world_size", "pp_rank", "destroy_parallel", "init_parallel", "tp_group", "tp_rank", "tp_world_size"]
