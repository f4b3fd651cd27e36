"""Megatron's tensor-parallel communication ops as autograd functions, each taking the process group.

- copy_to_tensor_parallel_region:     forward identity,        backward all-reduce (input of a column-parallel layer)
- reduce_from_tensor_parallel_region: forward all-reduce,      backward identity   (output of a row-parallel layer)
- gather_from_tensor_parallel_region: forward all-gather last, backward split last (gathering column outputs)

Sequence parallelism (Megatron-LM's scheme; tensors are (batch, seq, hidden), split along seq):
- scatter_to_sequence_parallel_region:        forward keep this rank's chunk, backward all-gather
- gather_from_sequence_parallel_region:       forward all-gather,             backward reduce-scatter (before column)
- reduce_scatter_to_sequence_parallel_region: forward reduce-scatter,         backward all-gather     (after row)

Each is one pair (forward, backward) of plain functions run by `_RegionOp`. With a group of one rank (or None)
every op is the identity, forward and backward, and adds no autograd node.
"""
from typing import Callable, Optional

import torch
import torch.distributed as dist

Collective = Callable[[torch.Tensor, Optional[dist.ProcessGroup]], torch.Tensor]


def group_size(group: Optional[dist.ProcessGroup]) -> int:
    return 1 if group is None else dist.get_world_size(group)


def all_reduce_sum(tensor: torch.Tensor, group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    """In-place sum over the group; returns `tensor`."""
    if group_size(group) > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def _identity(tensor: torch.Tensor, group) -> torch.Tensor:
    return tensor.view_as(tensor)


def _summed_copy(tensor: torch.Tensor, group) -> torch.Tensor:
    return all_reduce_sum(tensor.clone(), group)


def _split_last_dim(tensor: torch.Tensor, group) -> torch.Tensor:
    return tensor.chunk(group_size(group), dim=-1)[dist.get_rank(group)].contiguous()


def _gather_last_dim(tensor: torch.Tensor, group) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(group_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


def _split_sequence(tensor: torch.Tensor, group) -> torch.Tensor:
    return tensor.chunk(group_size(group), dim=1)[dist.get_rank(group)].contiguous()


def _gather_sequence(tensor: torch.Tensor, group) -> torch.Tensor:
    # Collectives concatenate along dim 0: move seq there and back.
    local = tensor.transpose(0, 1).contiguous()
    out = local.new_empty((local.shape[0] * group_size(group), *local.shape[1:]))
    dist.all_gather_into_tensor(out, local, group=group)
    return out.transpose(0, 1)


def _reduce_scatter_sequence(tensor: torch.Tensor, group) -> torch.Tensor:
    full = tensor.transpose(0, 1).contiguous()
    out = full.new_empty((full.shape[0] // group_size(group), *full.shape[1:]))
    dist.reduce_scatter_tensor(out, full, group=group)
    return out.transpose(0, 1)


class _RegionOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group, forward: Collective, backward: Collective):
        ctx.group, ctx.backward = group, backward
        return forward(tensor, group)

    @staticmethod
    def backward(ctx, grad):
        return ctx.backward(grad, ctx.group), None, None, None


def _region_op(forward: Collective, backward: Collective) -> Collective:
    def op(tensor: torch.Tensor, group: Optional[dist.ProcessGroup]) -> torch.Tensor:
        return tensor if group_size(group) == 1 else _RegionOp.apply(tensor, group, forward, backward)

    return op


copy_to_tensor_parallel_region = _region_op(_identity, _summed_copy)
reduce_from_tensor_parallel_region = _region_op(_summed_copy, _identity)
gather_from_tensor_parallel_region = _region_op(_gather_last_dim, _split_last_dim)
scatter_to_sequence_parallel_region = _region_op(_split_sequence, _gather_sequence)
gather_from_sequence_parallel_region = _region_op(_gather_sequence, _reduce_scatter_sequence)
reduce_scatter_to_sequence_parallel_region = _region_op(_reduce_scatter_sequence, _gather_sequence)
