"""One pre-norm transformer block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x)))."""
import torch
from torch import nn

from sa_megatron.config.schema import ModelConfig
from sa_megatron.model.attention import SelfAttention
from sa_megatron.model.init import InitMethods
from sa_megatron.model.mlp import MLP


def build_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "layernorm":
        return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
    return nn.RMSNorm(config.hidden_size, eps=config.norm_eps)


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig, init: InitMethods):
        super().__init__()
        self.attention_norm = build_norm(config)
        self.attention = SelfAttention(config, init)
        self.mlp_norm = build_norm(config)
        self.mlp = MLP(config, init)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x)))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))
