"""One pre-norm transformer block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x)))."""
import torch
from torch import nn

from sa_megatron.config.schema import ModelConfig
from sa_megatron.model.attention import SelfAttention
from sa_megatron.model.init import InitMethods
from sa_megatron.model.mlp import MLP
from sa_megatron.model.norm import build_norm, sequence_norm
from sa_megatron.parallel import tensor_parallel_group
from sa_megatron.parallel.rng_tracker import ShardedDropout


class TransformerBlock(nn.Module):
    """`layer_number` is the block's index in the whole model (0-based), whichever pipeline stage holds it."""

    def __init__(self, config: ModelConfig, init: InitMethods, layer_number: int = 0):
        super().__init__()
        self.layer_number = layer_number
        self.group = tensor_parallel_group()
        self.attention_norm = build_norm(config)
        self.attention = SelfAttention(config, init)
        self.mlp_norm = build_norm(config)
        self.mlp = MLP(config, init)
        self.dropout = ShardedDropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(sequence_norm(self.attention_norm, x, self.group)))
        return x + self.dropout(self.mlp(sequence_norm(self.mlp_norm, x, self.group)))
