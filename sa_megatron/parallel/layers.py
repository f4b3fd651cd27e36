"""Megatron's tensor-parallel layers. Each rank holds its shard of the weight; at one rank they are plain
nn.Linear / nn.Embedding math.

Weights are initialized as the full (master) matrix and then sliced to this rank's shard, so a model built with the
same seed has the same weights whatever the tensor-parallel size (Megatron's `use_cpu_initialization` behaviour).

Sharded parameters carry Megatron's attributes: `tensor_model_parallel = True` (DeepSpeed then counts them on every
tensor rank in the gradient norm, and replicated ones on tensor rank 0 only) and `partition_dim` (how checkpoints of
different tensor-parallel sizes are merged).

With sequence parallelism a column-parallel layer all-gathers its sequence-split input and a row-parallel layer
reduce-scatters its output back to sequence shards; replicated parameters used on a sequence shard (norms, the
row-parallel bias) see only this rank's tokens, so `replicated_on_sequence` sums their gradients over the group.
"""
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sa_megatron.parallel.comm import (
    copy_to_tensor_parallel_region,
    gather_from_sequence_parallel_region,
    gather_from_tensor_parallel_region,
    reduce_from_tensor_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
)
from sa_megatron.parallel.topology import (
    sequence_parallel,
    tensor_parallel_group,
    tensor_parallel_rank,
    tensor_parallel_world_size,
)

InitMethod = Callable[[torch.Tensor], object]


def shard_size(total: int, what: str) -> int:
    world = tensor_parallel_world_size()
    if total % world:
        raise ValueError(f"{what} ({total}) is not divisible by the tensor-parallel size ({world})")
    return total // world


def sharded_parameter(full_shape: tuple, shard_dim: int, init_method: InitMethod) -> nn.Parameter:
    """Initialize the full matrix with `init_method`, keep this rank's contiguous slice along `shard_dim`."""
    master = torch.empty(full_shape)
    init_method(master)
    local = full_shape[shard_dim] // tensor_parallel_world_size()
    start = tensor_parallel_rank() * local
    return mark_sharded(nn.Parameter(master.narrow(shard_dim, start, local).clone()), shard_dim)


def mark_sharded(param: nn.Parameter, shard_dim: int) -> nn.Parameter:
    param.tensor_model_parallel, param.partition_dim = True, shard_dim
    return param


def replicated_on_sequence(param: torch.Tensor, group) -> torch.Tensor:
    """`param` as used on a sequence shard: under sequence parallelism its gradient is summed over the group."""
    return copy_to_tensor_parallel_region(param, group) if sequence_parallel() and param is not None else param


def gather_input(x: torch.Tensor, group) -> torch.Tensor:
    """The input of a column-parallel matmul: the whole sequence on every rank, its gradient summed over the group."""
    if sequence_parallel():
        return gather_from_sequence_parallel_region(x, group)
    return copy_to_tensor_parallel_region(x, group)


def reduce_output(y: torch.Tensor, group) -> torch.Tensor:
    """The summed partial products of a row-parallel matmul, sequence-split under sequence parallelism."""
    if sequence_parallel():
        return reduce_scatter_to_sequence_parallel_region(y, group)
    return reduce_from_tensor_parallel_region(y, group)


class ColumnParallelLinear(nn.Module):
    """y = x Aᵀ + b with A split by output rows: this rank computes `out_features // tp` output features.

    The output stays split along its last dim unless `gather_output` (then every rank gets all features).
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool, init_method: InitMethod,
                 gather_output: bool = False):
        super().__init__()
        self.group = tensor_parallel_group()
        self.gather_output = gather_output
        self.in_features, self.out_features = in_features, out_features
        self.local_out_features = shard_size(out_features, "ColumnParallelLinear out_features")
        self.weight = sharded_parameter((out_features, in_features), 0, init_method)
        self.bias = mark_sharded(nn.Parameter(torch.zeros(self.local_out_features)), 0) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(gather_input(x, self.group), self.weight, self.bias)
        return gather_from_tensor_parallel_region(y, self.group) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """y = x Aᵀ + b with A split by input columns: takes the split output of a ColumnParallelLinear, sums the
    partial products over the group, then adds the (replicated) bias once."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool, init_method: InitMethod):
        super().__init__()
        self.group = tensor_parallel_group()
        self.in_features, self.out_features = in_features, out_features
        self.local_in_features = shard_size(in_features, "RowParallelLinear in_features")
        self.weight = sharded_parameter((out_features, in_features), 1, init_method)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = reduce_output(F.linear(x, self.weight), self.group)
        return y if self.bias is None else y + replicated_on_sequence(self.bias, self.group)


class VocabParallelEmbedding(nn.Module):
    """Embedding table split by vocabulary rows: rank r owns ids [r·V/tp, (r+1)·V/tp); other ids look up zeros
    here and are filled in by the rank that owns them (sum over the group)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, init_method: InitMethod):
        super().__init__()
        self.group = tensor_parallel_group()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        local = shard_size(num_embeddings, "VocabParallelEmbedding num_embeddings (the padded vocabulary)")
        self.vocab_start = tensor_parallel_rank() * local
        self.vocab_end = self.vocab_start + local
        self.weight = sharded_parameter((num_embeddings, embedding_dim), 0, init_method)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.vocab_end - self.vocab_start == self.num_embeddings:  # one rank holds every row: nothing to mask
            return F.embedding(tokens, self.weight)
        outside = (tokens < self.vocab_start) | (tokens >= self.vocab_end)
        local_ids = (tokens - self.vocab_start).masked_fill(outside, 0)
        embedded = F.embedding(local_ids, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tensor_parallel_region(embedded, self.group)
