"""Parameter counts and training FLOPs per token (for MFU)."""
from torch import nn

from sa_megatron.config.schema import ModelConfig
from sa_megatron.model.mlp import ffn_hidden_size
from sa_megatron.model.position import DapeScoreMLP


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters on this rank: a tied embedding/head weight counts once."""
    return sum(param.numel() for param in model.parameters())


def matmul_parameters(config: ModelConfig, padded_vocab_size: int) -> int:
    """Weights that multiply every token's activations, over the whole model (all TP ranks): per layer
    QKV (3h²) + attention out (h²) + MLP (2·h·f gelu, 3·h·f SwiGLU), plus the output head (V·h).
    Embedding lookups do no multiplications; biases, norms and Kerple/ALiBi parameters are O(h) and left out."""
    h, f = config.hidden_size, ffn_hidden_size(config)
    mlp_matrices = 3 if config.mlp == "swiglu" else 2
    return config.num_layers * (4 * h * h + mlp_matrices * h * f) + padded_vocab_size * h


def flops_per_token(model_config: ModelConfig, padded_vocab_size: int) -> int:
    """Training (forward + backward) FLOPs per token, the PaLM / Megatron formula without recomputation:

        6 · N  +  12 · L · h · s

    N = `matmul_parameters` (2 FLOPs per multiply-add, ×3 for forward + backward); 12·L·h·s counts the two
    attention matmuls QKᵀ and WV over s = seq_length keys (not halved for the causal mask, as in PaLM).
    dapev2-kerple adds its score MLP: 6 · L · s · 2·heads·width (it runs once per (query, key) pair).
    Activation checkpointing's extra forward is deliberately not counted (MFU counts useful work only).
    """
    c = model_config
    flops = 6 * matmul_parameters(c, padded_vocab_size) + 12 * c.num_layers * c.hidden_size * c.seq_length
    if c.position_encoding == "dapev2-kerple":
        flops += 6 * c.num_layers * c.seq_length * 2 * c.num_attention_heads * DapeScoreMLP.WIDTH
    return flops
