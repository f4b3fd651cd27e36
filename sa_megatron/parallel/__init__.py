"""Tensor-parallel building blocks (Megatron-style); plain single-device math while the group has one rank."""
from sa_megatron.parallel.cross_entropy import vocab_parallel_cross_entropy
from sa_megatron.parallel.layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from sa_megatron.parallel.topology import (
    set_tensor_parallel_group,
    tensor_parallel_group,
    tensor_parallel_rank,
    tensor_parallel_world_size,
)

__all__ = [
    "ColumnParallelLinear",
    "RowParallelLinear",
    "VocabParallelEmbedding",
    "vocab_parallel_cross_entropy",
    "set_tensor_parallel_group",
    "tensor_parallel_group",
    "tensor_parallel_rank",
    "tensor_parallel_world_size",
]
