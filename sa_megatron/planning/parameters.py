"""Exact parameter counts of the model, whole and per (tensor-parallel rank, pipeline stage).

Counts come from the real layers built on the meta device (no memory, no init), so they follow every model option
without a formula to keep in sync. A parameter is split over the tensor-parallel ranks when the layer that made it
marked it `tensor_model_parallel` (column/row/vocabulary-parallel weights, column-parallel biases, per-head
Kerple parameters); everything else (norms, row-parallel biases, the learned position table) is replicated.
"""
from dataclasses import dataclass

import torch
from deepspeed.pipe import TiedLayerSpec
from torch import nn

from sa_megatron.config.schema import ModelConfig
from sa_megatron.model import build_model, count_parameters
from sa_megatron.model.block import TransformerBlock
from sa_megatron.model.gpt import gpt_layers


@dataclass(frozen=True)
class ShardedCount:
    """Parameters of some layers at tensor-parallel size 1: `sharded` are split evenly over the TP ranks."""
    sharded: int
    replicated: int
    largest_module: int  # the most parameters one module owns directly (ZeRO-3 gathers a module at a time)

    def per_rank(self, tensor_parallel: int) -> int:
        return self.sharded // tensor_parallel + self.replicated


@dataclass(frozen=True)
class ModelParameters:
    total: int
    first: ShardedCount  # the layers before the blocks (token embedding, embedding output)
    block: ShardedCount  # one TransformerBlock (all blocks are alike)
    last: ShardedCount  # the layers after the blocks, without a tied head's embedding
    tied_embedding: ShardedCount  # a tied head's weight: the last stage's own copy when pp > 1
    num_layers: int

    def stage_parameters(self, stage: int, tensor_parallel: int, pipeline_parallel: int) -> int:
        """Parameters held by one tensor-parallel rank of pipeline stage `stage`."""
        count = self.num_layers // pipeline_parallel * self.block.per_rank(tensor_parallel)
        if stage == 0:
            count += self.first.per_rank(tensor_parallel)
        if stage == pipeline_parallel - 1:
            count += self.last.per_rank(tensor_parallel)
            if pipeline_parallel > 1:
                # DeepSpeed's TiedLayerSpec: the last stage keeps its own copy, kept equal by an all-reduce.
                count += self.tied_embedding.per_rank(tensor_parallel)
        return count

    def largest_module(self, tensor_parallel: int) -> int:
        """Per-rank parameters of the biggest single module, counted as if all of it were split (its weight is)."""
        return max(-(-part.largest_module // tensor_parallel) for part in (self.first, self.block, self.last))


def count_model_parameters(config: ModelConfig, padded_vocab_size: int) -> ModelParameters:
    """Build the model's layers on the meta device at tensor-parallel size 1 and count them exactly."""
    specs = gpt_layers(config, padded_vocab_size)
    is_block = [spec.typename is TransformerBlock for spec in specs]
    first_block, last_block = is_block.index(True), len(specs) - 1 - is_block[::-1].index(True)
    tied_head = [spec for spec in specs[last_block + 1:] if isinstance(spec, TiedLayerSpec)]
    with torch.device("meta"):
        total = count_parameters(build_model(config, padded_vocab_size))
        first = [spec.build() for spec in specs[:first_block]]
        block = specs[first_block].build()
        last = [spec.build() for spec in specs[last_block + 1:] if not isinstance(spec, TiedLayerSpec)]
        tied = [spec.build() for spec in tied_head]
    return ModelParameters(total, _sharded_count(first), _sharded_count([block]), _sharded_count(last),
                           _sharded_count(tied), config.num_layers)


def _sharded_count(layers: list[nn.Module]) -> ShardedCount:
    sharded = replicated = largest = 0
    for layer in layers:
        for module in layer.modules():
            own = list(module.parameters(recurse=False))
            largest = max(largest, sum(param.numel() for param in own))
            for param in own:
                if getattr(param, "tensor_model_parallel", False):
                    sharded += param.numel()
                else:
                    replicated += param.numel()
    return ShardedCount(sharded, replicated, largest)
