"""The object DeepSpeed calls `mpu` (model-parallel unit), backed by megatron-core's groups.

DeepSpeed asks for `get_{model,data}_parallel_{rank,group,world_size}`; megatron's parallel_state
module has different names, so it cannot be passed as is. Model parallel here means tensor parallel
(without a PipelineModule; with one, DeepSpeed takes the groups from the pipeline topology).
"""

from __future__ import annotations

from megatron_ext.parallel_state import ps


class MegatronMpu:
    get_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_tensor_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_src_rank = staticmethod(ps.get_tensor_model_parallel_src_rank)
    get_data_parallel_rank = staticmethod(ps.get_data_parallel_rank)
    get_data_parallel_group = staticmethod(ps.get_data_parallel_group)
    get_data_parallel_world_size = staticmethod(ps.get_data_parallel_world_size)
    get_pipeline_model_parallel_rank = staticmethod(ps.get_pipeline_model_parallel_rank)
    get_pipeline_model_parallel_world_size = staticmethod(ps.get_pipeline_model_parallel_world_size)

    @staticmethod
    def get_sequence_parallel_world_size() -> int:
        return 1


def dp_rank() -> int:
    return ps.get_data_parallel_rank()


def dp_world_size() -> int:
    return ps.get_data_parallel_world_size()


def pp_rank() -> int:
    return ps.get_pipeline_model_parallel_rank()


def assert_groups_match(grid) -> None:
    """DeepSpeed's pipeline grid must put every rank where megatron-core does."""
    ours = (ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank(), ps.get_pipeline_model_parallel_rank())
    theirs = (grid.get_slice_parallel_rank(), grid.get_data_parallel_rank(), grid.get_pipe_parallel_rank())
    if ours != theirs:
        raise RuntimeError(f"rank layout mismatch: megatron (tp, dp, pp) ranks {ours}, DeepSpeed {theirs}")
