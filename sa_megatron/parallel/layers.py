"""Megatron's tensor-parallel layers. Each rank holds its shard of the weight; at one rank they are plain
nn.Linear / nn.Embedding math.

Weights are initialized as the full (master) matrix and then sliced to this rank's shard, so a model built with the
same seed has the same weights whatever the tensor-parallel size (Megatron's `use_cpu_initialization` behaviour).
"""
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sa_megatron.parallel.comm import (
    copy_to_tensor_parallel_region,
    gather_from_tensor_parallel_region,
    reduce_from_tensor_parallel_region,
)
from sa_megatron.parallel.state import tensor_parallel_group, tensor_parallel_rank, tensor_parallel_world_size

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
    return nn.Parameter(master.narrow(shard_dim, start, local).clone())


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
        self.bias = nn.Parameter(torch.zeros(self.local_out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(copy_to_tensor_parallel_region(x, self.group), self.weight, self.bias)
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
        y = reduce_from_tensor_parallel_region(F.linear(x, self.weight), self.group)
        return y if self.bias is None else y + self.bias


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
        outside = (tokens < self.vocab_start) | (tokens >= self.vocab_end)
        local_ids = (tokens - self.vocab_start).masked_fill(outside, 0)
        embedded = F.embedding(local_ids, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tensor_parallel_region(embedded, self.group)
