"""The GPT as an ordered list of layers (DESIGN §5) and the module that runs them.

`gpt_layers` gives [EmbeddingStage, TransformerBlock × L, OutputStage]; each takes and returns one tensor
(tokens → hidden → … → logits), so the same list can feed `deepspeed.pipe.PipelineModule` when pp > 1.
"""
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sa_megatron.config.schema import ModelConfig
from sa_megatron.model.block import TransformerBlock
from sa_megatron.model.init import init_methods
from sa_megatron.model.stages import EmbeddingStage, OutputStage
from sa_megatron.parallel.comm import all_reduce_sum
from sa_megatron.parallel.state import tensor_parallel_group, tensor_parallel_world_size


def gpt_layers(config: ModelConfig, padded_vocab_size: int) -> list[nn.Module]:
    init = init_methods(config)
    embedding = EmbeddingStage(config, padded_vocab_size, init)
    blocks = [TransformerBlock(config, init) for _ in range(config.num_layers)]
    # The tie: the head gets the embedding module itself (None = its own weight). See stages.py.
    tied = embedding.word_embeddings if config.tie_embeddings else None
    return [embedding, *blocks, OutputStage(config, padded_vocab_size, init, tied)]


class GPTModel(nn.Module):
    """Runs the layers of `gpt_layers` in order: tokens (B, N) → logits (B, N, padded_vocab // tp)."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        # Set by the trainer: recompute each block's activations in backward instead of storing them.
        self.activation_checkpointing = False

    @property
    def blocks(self) -> list[TransformerBlock]:
        return [layer for layer in self.layers if isinstance(layer, TransformerBlock)]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens
        for layer in self.layers:
            if self.activation_checkpointing and isinstance(layer, TransformerBlock) and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x

    @torch.no_grad()
    def attention_row_mass(self, tokens: torch.Tensor) -> list[float]:
        """Per layer, the mean over (batch, heads, rows) of Σ_j w_ij: 1 for softmax, below 1 for SA-Softmax.

        One eval-mode forward without gradients; each layer re-runs its attention core on its own q, k with v = ones,
        so no N×N matrix is built (unless the layer's path is eager anyway).
        """
        attentions = [block.attention for block in self.blocks]
        was_training = self.training
        self.eval()
        for attention in attentions:
            attention.measure_row_mass = True
        try:
            self(tokens)
            # Each tensor-parallel rank measured its own heads: average the ranks.
            masses = all_reduce_sum(torch.stack([attention.row_mass for attention in attentions]),
                                    tensor_parallel_group()) / tensor_parallel_world_size()
            return masses.tolist()
        finally:
            for attention in attentions:
                attention.measure_row_mass = False
                attention.row_mass = None
            self.train(was_training)

    def qk_grad_norms(self, get_grad: Optional[Callable] = None) -> list[tuple[float, float]]:
        """Per layer, the L2 norms of the gradients of the q and k projections (weight and bias together).

        `get_grad(param)` returns a parameter's full gradient: `deepspeed.utils.safe_get_full_grad` under ZeRO,
        `param.grad` by default. With tensor parallelism the squared norms are summed over the group's heads.
        """
        get_grad = get_grad or (lambda param: param.grad)
        per_layer = []
        for index, block in enumerate(self.blocks):
            attention = block.attention
            squares = []
            for param in (attention.qkv.weight, attention.qkv.bias):
                if param is None:
                    continue
                grad = get_grad(param)
                if grad is None:
                    raise RuntimeError(f"qk_grad_norms: layer {index}'s QKV parameter has no gradient; "
                                       "call it after backward and before the gradients are zeroed")
                q_grad, k_grad, _ = attention.split_qkv(grad.detach().double())
                squares.append(torch.stack([q_grad.square().sum(), k_grad.square().sum()]))
            per_layer.append(torch.stack(squares).sum(dim=0))
        squares = all_reduce_sum(torch.stack(per_layer), tensor_parallel_group())
        return [tuple(row) for row in squares.sqrt().tolist()]


def build_model(model_config: ModelConfig, padded_vocab_size: int) -> GPTModel:
    return GPTModel(gpt_layers(model_config, padded_vocab_size))
