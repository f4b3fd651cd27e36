"""The process topology: the one module that knows how ranks form the (pipeline, data, tensor) grid.

Ranks are laid out in Megatron's order, tensor fastest, then data, then pipeline (DeepSpeed's
`PipeModelDataParallelTopology`), so the ranks of one tensor group are consecutive and stay inside a node. Every other
module asks this one for its groups and ranks.

Until `init_topology` (training) or `set_tensor_parallel_group` (a bare model in tests) is called, the process is a
single rank of every group: group None, rank 0, size 1, so parallel layers are plain nn.Linear / nn.Embedding math and
every communication op is a no-op. Layers read the groups when they are built: set them before building a model.
"""
import contextlib
import io
from typing import NamedTuple, Optional

import torch.distributed as dist

from sa_megatron.errors import ConfigError


class _State(NamedTuple):
    tensor_group: Optional[dist.ProcessGroup] = None
    sequence_parallel: bool = False
    grid: Optional[object] = None  # DeepSpeed's PipelineParallelGrid (its "mpu") once init_topology ran


_state = _State()


def _grid_topology(tensor_parallel: int, pipeline_parallel: int, data_parallel: int):
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    return PipeModelDataParallelTopology(num_pp=pipeline_parallel, num_mp=tensor_parallel, num_dp=data_parallel)


def rank_in_layout(tensor_parallel: int, pipeline_parallel: int, data_parallel: int, *, stage: int, data_rank: int,
                   tensor_rank: int) -> int:
    """The global rank of (stage, data_rank, tensor_rank) in another layout's grid (e.g. a checkpoint's)."""
    return _grid_topology(tensor_parallel, pipeline_parallel, data_parallel).get_rank(
        pipe=stage, data=data_rank, model=tensor_rank)


def init_topology(tensor_parallel: int, pipeline_parallel: int, sequence_parallel: bool = False) -> None:
    """Build the process groups of the grid over the initialized default group."""
    from deepspeed.runtime.pipe.topology import PipelineParallelGrid

    global _state
    world = dist.get_world_size()
    if world % (tensor_parallel * pipeline_parallel):
        raise ConfigError(f"world size {world} is not a multiple of tensor_parallel × pipeline_parallel = "
                          f"{tensor_parallel} × {pipeline_parallel}: launch a multiple of "
                          f"{tensor_parallel * pipeline_parallel} ranks")
    data_parallel = world // (tensor_parallel * pipeline_parallel)
    with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed prints the whole rank table on rank 0
        grid = PipelineParallelGrid(topology=_grid_topology(tensor_parallel, pipeline_parallel, data_parallel))
    tensor_group = grid.get_slice_parallel_group() if tensor_parallel > 1 else None
    _state = _State(tensor_group, sequence_parallel and tensor_parallel > 1, grid)


def set_tensor_parallel_group(group: Optional[dist.ProcessGroup], sequence_parallel: bool = False) -> None:
    """Make `group` the tensor-parallel group of a bare model (no data or pipeline axes; None returns to one rank)."""
    global _state
    _state = _State(group, sequence_parallel and group is not None and dist.get_world_size(group) > 1)


def grid():
    """DeepSpeed's PipelineParallelGrid, the `mpu` its engines and ZeRO read groups from (None before init)."""
    return _state.grid


def tensor_parallel_group() -> Optional[dist.ProcessGroup]:
    return _state.tensor_group


def tensor_parallel_rank() -> int:
    return 0 if _state.tensor_group is None else dist.get_rank(_state.tensor_group)


def tensor_parallel_world_size() -> int:
    return 1 if _state.tensor_group is None else dist.get_world_size(_state.tensor_group)


def sequence_parallel() -> bool:
    """Megatron's sequence parallelism: norms, dropout and residuals see this rank's 1/tp of the sequence."""
    return _state.sequence_parallel


def data_parallel_rank() -> int:
    return 0 if _state.grid is None else _state.grid.get_data_parallel_rank()


def data_parallel_world_size() -> int:
    return 1 if _state.grid is None else _state.grid.get_data_parallel_world_size()


def pipeline_stage() -> int:
    return 0 if _state.grid is None else _state.grid.get_stage_id()


def pipeline_world_size() -> int:
    return 1 if _state.grid is None else _state.grid.get_pipe_parallel_world_size()


def model_parallel_group() -> Optional[dist.ProcessGroup]:
    """All ranks holding one replica of the model (its stages × tensor shards); None for a bare model."""
    return None if _state.grid is None else _state.grid.get_model_parallel_group()


def pipeline_group() -> Optional[dist.ProcessGroup]:
    """The ranks holding the other stages of this rank's pipeline (None for a bare model)."""
    return None if _state.grid is None else _state.grid.get_pipe_parallel_group()
