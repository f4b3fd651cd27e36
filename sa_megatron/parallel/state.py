"""The tensor-parallel process group: the one place that knows whether tensor parallelism is on.

Until `set_tensor_parallel_group` is called the model runs as a single tensor-parallel rank (group None, rank 0,
world size 1), so every parallel layer is plain nn.Linear / nn.Embedding math and every communication op is a no-op.
Layers read the group when they are built: set it before building the model.
"""
from typing import Optional

import torch.distributed as dist

_group: Optional[dist.ProcessGroup] = None


def set_tensor_parallel_group(group: Optional[dist.ProcessGroup]) -> None:
    """Make `group` the tensor-parallel group of this process (None returns to a single rank)."""
    global _group
    _group = group


def tensor_parallel_group() -> Optional[dist.ProcessGroup]:
    return _group


def tensor_parallel_rank() -> int:
    return 0 if _group is None else dist.get_rank(_group)


def tensor_parallel_world_size() -> int:
    return 1 if _group is None else dist.get_world_size(_group)
