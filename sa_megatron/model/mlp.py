"""The feed-forward block: gelu (h → f → h) or SwiGLU (silu(gate) ⊙ up, then down)."""
import torch
import torch.nn.functional as F
from torch import nn

from sa_megatron.config.schema import ModelConfig
from sa_megatron.model.init import InitMethods
from sa_megatron.parallel import ColumnParallelLinear, RowParallelLinear


def ffn_hidden_size(config: ModelConfig) -> int:
    """config.ffn_hidden_size, else 4·h for gelu and 8/3·h rounded up to a multiple of 64 for SwiGLU (which has
    three matrices instead of two: 8/3 keeps the parameter count of the 4·h gelu MLP)."""
    if config.ffn_hidden_size is not None:
        return config.ffn_hidden_size
    if config.mlp == "gelu":
        return 4 * config.hidden_size
    return -(-(8 * config.hidden_size) // (3 * 64)) * 64


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, init: InitMethods):
        super().__init__()
        hidden, ffn = config.hidden_size, ffn_hidden_size(config)
        self.swiglu = config.mlp == "swiglu"
        # Gate and up are separate column-parallel layers so each TP rank's shard pairs matching gate/up features.
        self.fc_in = ColumnParallelLinear(hidden, ffn, bias=config.bias, init_method=init.input_side)
        self.fc_gate = (ColumnParallelLinear(hidden, ffn, bias=config.bias, init_method=init.input_side)
                        if self.swiglu else None)
        self.fc_out = RowParallelLinear(ffn, hidden, bias=config.bias, init_method=init.output_projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            inner = F.silu(self.fc_gate(x)) * self.fc_in(x)
        else:
            inner = F.gelu(self.fc_in(x))
        return self.fc_out(inner)
