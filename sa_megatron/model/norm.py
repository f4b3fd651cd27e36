"""Normalization layers, and their use on sequence shards."""
import torch
import torch.nn.functional as F
from torch import nn

from sa_megatron.config.schema import ModelConfig
from sa_megatron.parallel.layers import replicated_on_sequence
from sa_megatron.parallel.topology import sequence_parallel


def build_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "layernorm":
        return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
    return nn.RMSNorm(config.hidden_size, eps=config.norm_eps)


def sequence_norm(norm: nn.Module, hidden: torch.Tensor, group) -> torch.Tensor:
    """`norm(hidden)`; under sequence parallelism its weights see only this rank's tokens, so their gradients are
    summed over the tensor group."""
    if not sequence_parallel():
        return norm(hidden)
    weight = replicated_on_sequence(norm.weight, group)
    if isinstance(norm, nn.LayerNorm):
        return F.layer_norm(hidden, norm.normalized_shape, weight, replicated_on_sequence(norm.bias, group), norm.eps)
    return F.rms_norm(hidden, norm.normalized_shape, weight, norm.eps)
