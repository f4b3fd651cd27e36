"""Weight initialization (GPT-NeoX's small_init / wang_init, or a plain normal).

Two kinds of weight matrices, given `h = hidden_size`, `L = num_layers`:

- input-side weights: token and learned-position embeddings, the fused QKV projection, the MLP's first linear(s),
  an untied output head, the DAPE-V2 score MLP;
- output projections: the attention output projection and the MLP's last linear — the two matrices that write into
  the residual stream, so their scale sets how fast the residual grows with depth.

| init_method  | input-side weights               | output projections          |
|--------------|----------------------------------|-----------------------------|
| "small_init" | N(0, sqrt(2 / (5h)))  small_init | N(0, 2 / (L·sqrt(h)))  wang |
| "wang_init"  | N(0, sqrt(2 / (5h)))  small_init | N(0, 2 / (L·sqrt(h)))  wang |
| "normal"     | N(0, init_std)                   | N(0, init_std)              |

("small_init" and "wang_init" are GPT-NeoX's usual pairing, init_method=small_init with
output_layer_init_method=wang_init, reached from either name.) Biases start at zero and norm weights at one (the
layers' own defaults); Kerple's p, a start at U(0, 2), U(0, 1).
"""
import math
from typing import Callable, NamedTuple

import torch
from torch import nn

from sa_megatron.config.schema import ModelConfig
from sa_megatron.errors import ConfigError


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
    if config.init_method == "normal":
        return InitMethods(normal_init(config.init_std), normal_init(config.init_std))
    if config.init_method in ("small_init", "wang_init"):
        return InitMethods(normal_init(small_init_std(config.hidden_size)),
                           normal_init(wang_init_std(config.hidden_size, config.num_layers)))
    raise ConfigError(f"model.init_method must be 'small_init', 'wang_init' or 'normal', got {config.init_method!r}")
