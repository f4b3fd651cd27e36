"""Megatron's tensor-parallel communication ops as autograd functions, each taking the process group.

- copy_to_tensor_parallel_region:     forward identity,        backward all-reduce (input of a column-parallel layer)
- reduce_from_tensor_parallel_region: forward all-reduce,      backward identity   (output of a row-parallel layer)
- gather_from_tensor_parallel_region: forward all-gather last, backward split last (gathering column outputs)

Sequence parallelism (Megatron-LM's scheme; tensors are (batch, seq, hidden), split along seq):
- scatter_to_sequence_parallel_region:        forward keep this rank's chunk, backward all-gather
- gather_from_sequence_parallel_region:       forward all-gather,             backward reduce-scatter (before column)
- reduce_scatter_to_sequence_parallel_region: forward reduce-scatter,         backward all-gather     (after row)

With a group of one rank (or None) every op is the identity, forward and backward.
"""
from typing import Optional

import torch
import torch.distributed as dist


def group_size(group: Optional[dist.ProcessGroup]) -> int:
    return 1 if group is None else dist.get_world_size(group)


def all_reduce_sum(tensor: torch.Tensor, group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    """In-place sum over the group; returns `tensor`."""
    if group_size(group) > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def _split_last_dim(tensor: torch.Tensor, group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    size = group_size(group)
    if size == 1:
        return tensor
    return tensor.chunk(size, dim=-1)[dist.get_rank(group)].contiguous()


def _gather_last_dim(tensor: torch.Tensor, group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    size = group_size(group)
    if size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


class _CopyToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_sum(grad.clone(), ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        return all_reduce_sum(tensor.clone(), group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        return _gather_last_dim(tensor, group)

    @staticmethod
    def backward(ctx, grad):
        return _split_last_dim(grad, ctx.group), None


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


class _ScatterToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        return _split_sequence(tensor, group)

    @staticmethod
    def backward(ctx, grad):
        return _gather_sequence(grad, ctx.group), None


class _GatherFromSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        return _gather_sequence(tensor, group)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter_sequence(grad, ctx.group), None


class _ReduceScatterToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        return _reduce_scatter_sequence(tensor, group)

    @staticmethod
    def backward(ctx, grad):
        return _gather_sequence(grad, ctx.group), None


# A single rank skips the autograd node altogether: nothing to communicate either way.
def copy_to_tensor_parallel_region(tensor, group):
    return tensor if group_size(group) == 1 else _CopyToRegion.apply(tensor, group)


def reduce_from_tensor_parallel_region(tensor, group):
    return tensor if group_size(group) == 1 else _ReduceFromRegion.apply(tensor, group)


def gather_from_tensor_parallel_region(tensor, group):
    return tensor if group_size(group) == 1 else _GatherFromRegion.apply(tensor, group)


def scatter_to_sequence_parallel_region(tensor, group):
    return tensor if group_size(group) == 1 else _ScatterToSequence.apply(tensor, group)


def gather_from_sequence_parallel_region(tensor, group):
    return tensor if group_size(group) == 1 else _GatherFromSequence.apply(tensor, group)


def reduce_scatter_to_sequence_parallel_region(tensor, group):
    return tensor if group_size(group) == 1 else _ReduceScatterToSequence.apply(tensor, group)
