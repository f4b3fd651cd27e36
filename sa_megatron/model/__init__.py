"""The Megatron-style GPT: an ordered list of layers built from `ModelConfig` (DESIGN §5)."""
from sa_megatron.model.accounting import count_parameters, flops_per_token
from sa_megatron.model.gpt import GPTModel, build_model, gpt_layers
from sa_megatron.model.loss import language_model_loss
from sa_megatron.model.param_groups import no_weight_decay

__all__ = ["GPTModel", "build_model", "gpt_layers", "language_model_loss", "count_parameters", "flops_per_token",
           "no_weight_decay"]
