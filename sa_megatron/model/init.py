"""Weight initialization (GPT-NeoX's small_init / wang_init, or a plain normal).

Two kinds of weight matrices, given `h = hidden_size`, `L = num_layers`:

- input-side weights: token and learned-position embeddings, the fused QKV projection, the MLP's first linear(s),
  an untied output head, the DAPE-V2 score MLP;
- output projections: the attention output projection and the MLP's last linear — the two matrices that write into
  the residual stream, so their scale sets how fast the residual grows with depth.

Each kind has its own config field, as in GPT-NeoX (`init_method` / `output_layer_init_method`):

| model.init_method | input-side weights     |   | model.output_init_method | output projections        |
|-------------------|------------------------|---|--------------------------|---------------------------|
| "small_init"      | N(0, sqrt(2 / (5h)))   |   | "wang_init"              | N(0, 2 / (L·sqrt(h)))     |
| "normal"          | N(0, init_std)         |   | "scaled_normal"          | N(0, init_std / sqrt(2L)) |
|                   |                        |   | "normal"                 | N(0, init_std)            |

Biases start at zero and norm weights at one (the
layers' own defaults); Kerple's p, a start at U(0, 2), U(0, 1).
"""
import math
from typing import Callable, NamedTuple

import torch
from torch import nn

from sa_megatron.config.schema import ModelConfig


def small_init_std(hidden_size: int) -> float:
    return math.sqrt(2.0 / (5.0 * hidden_size))


def wang_init_std(hidden_size: int, num_layers: int) -> float:
    return 2.0 / (num_layers * math.sqrt(hidden_size))


def normal_init(std: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda tensor: nn.init.normal_(tensor, mean=0.0, std=std)


class InitMethods(NamedTuple):
    input_side: Callable[[torch.Tensor], torch.Tensor]
    output_projection: Callable[[torch.Tensor], torch.Tensor]


def init_methods(config: ModelConfig) -> InitMethods:
    input_std = {"small_init": small_init_std(config.hidden_size), "normal": config.init_std}
    output_std = {
        "wang_init": wang_init_std(config.hidden_size, config.num_layers),
        "scaled_normal": config.init_std / math.sqrt(2.0 * config.num_layers),
        "normal": config.init_std,
    }
    return InitMethods(normal_init(input_std[config.init_method]), normal_init(output_std[config.output_init_method]))
