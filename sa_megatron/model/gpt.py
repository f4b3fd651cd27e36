"""The GPT as an ordered list of layer specs (DESIGN §5), and the module that runs them in one process.

`gpt_layers` gives DeepSpeed LayerSpecs for [token embedding, embedding output, TransformerBlock × L, final norm,
head]; each layer takes and returns one tensor (tokens → hidden → … → logits). The same list feeds
`deepspeed.pipe.PipelineModule` when pipeline_parallel > 1 (each stage builds only its own layers) and `GPTModel`
otherwise. Both seed layer i's initialization with `seed + i`, so a model has the same weights at every layout.
Parameter names are the PipelineModule's: `<layer index>.<name>`, and `tied_modules.word_embeddings.weight` for a
tied embedding/head.
"""
from functools import partial
from typing import Callable, Optional

import torch
from deepspeed.pipe import LayerSpec, TiedLayerSpec
from torch import nn

from sa_megatron.config.schema import ModelConfig
from sa_megatron.model.block import TransformerBlock
from sa_megatron.model.init import init_methods
from sa_megatron.model.stages import EmbeddingOutput, FinalNorm, OutputHead, tied_output_head
from sa_megatron.parallel import VocabParallelEmbedding, tensor_parallel_group, tensor_parallel_world_size
from sa_megatron.parallel.comm import all_reduce_sum
from sa_megatron.parallel.rng_tracker import checkpoint

TIED_EMBEDDING = "word_embeddings"


def gpt_layers(config: ModelConfig, padded_vocab_size: int) -> list[LayerSpec]:
    init = init_methods(config)
    embedding_args = (padded_vocab_size, config.hidden_size)
    if config.tie_embeddings:
        embedding = TiedLayerSpec(TIED_EMBEDDING, VocabParallelEmbedding, *embedding_args,
                                  init_method=init.input_side, tied_weight_attr="weight")
        head = TiedLayerSpec(TIED_EMBEDDING, VocabParallelEmbedding, *embedding_args, init_method=init.input_side,
                             forward_fn=tied_output_head, tied_weight_attr="weight")
    else:
        embedding = LayerSpec(VocabParallelEmbedding, *embedding_args, init_method=init.input_side)
        head = LayerSpec(OutputHead, config, padded_vocab_size, init)
    blocks = [LayerSpec(TransformerBlock, config, init, layer_number=i) for i in range(config.num_layers)]
    return [embedding, LayerSpec(EmbeddingOutput, config, init), *blocks, LayerSpec(FinalNorm, config), head]


def seed_layer(seed: int) -> None:
    """The seed of a layer's initialization (PipelineModule's `seed_fn`)."""
    torch.manual_seed(seed)


class GPTModel(nn.Module):
    """Runs the layers of `gpt_layers` in order: tokens (B, N) → logits (B, N, padded_vocab // tp)."""

    def __init__(self, specs: list[LayerSpec], seed: int = 0):
        super().__init__()
        self.tied_modules = nn.ModuleDict()
        self.forwards: list[Callable] = []
        for index, spec in enumerate(specs):
            seed_layer(seed + index)
            if isinstance(spec, TiedLayerSpec):
                if spec.key not in self.tied_modules:
                    self.tied_modules[spec.key] = spec.build()
                module = self.tied_modules[spec.key]
                self.forwards.append(module if spec.forward_fn is None else partial(spec.forward_fn, module))
            else:
                module = spec.build()
                self.add_module(str(index), module)
                self.forwards.append(module)
        # Set by the trainer: recompute each block's activations in backward instead of storing them.
        self.activation_checkpointing = False

    @property
    def blocks(self) -> list[TransformerBlock]:
        return transformer_blocks(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens
        for layer in self.forwards:
            if self.activation_checkpointing and isinstance(layer, TransformerBlock) and torch.is_grad_enabled():
                x = checkpoint(layer, x)
            else:
                x = layer(x)
        return x

    @torch.no_grad()
    def attention_row_mass(self, tokens: torch.Tensor) -> list[float]:
        """Per layer, the mean over (batch, heads, rows) of Σ_j w_ij: 1 for softmax, below 1 for SA-Softmax.

        One eval-mode forward without gradients (see `measuring_row_mass`)."""
        with measuring_row_mass(self) as masses:
            self(tokens)
        return [mass for _, mass in sorted(masses.items())]

    def qk_grad_norms(self, get_grad: Optional[Callable] = None) -> list[tuple[float, float]]:
        """Per layer, the L2 norms of the gradients of the q and k projections (weight and bias together)."""
        squares = qk_grad_squares(self, get_grad)
        return [tuple(row) for row in torch.stack([squares[i] for i in sorted(squares)]).sqrt().tolist()]


def transformer_blocks(module: nn.Module) -> list[TransformerBlock]:
    """The blocks a module (a GPTModel, or one pipeline stage) holds, in model order."""
    return sorted((m for m in module.modules() if isinstance(m, TransformerBlock)), key=lambda b: b.layer_number)


class measuring_row_mass:
    """Within the block, forwards of `module` run in eval mode and record each block's mean attention row mass;
    the value of the context is a dict {layer_number: mass averaged over the tensor-parallel ranks' heads}, filled
    on exit. Each layer re-runs its attention core on its own q, k with v = ones, so no N×N matrix is built (unless
    the layer's path is eager anyway)."""

    def __init__(self, module: nn.Module):
        self.module, self.blocks, self.masses = module, transformer_blocks(module), {}

    def __enter__(self) -> dict:
        self.was_training = self.module.training
        self.module.eval()
        for block in self.blocks:
            block.attention.measure_row_mass = True
        return self.masses

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None and self.blocks:
                # Each tensor-parallel rank measured its own heads: average the ranks.
                stacked = torch.stack([block.attention.row_mass for block in self.blocks])
                stacked = all_reduce_sum(stacked, tensor_parallel_group()) / tensor_parallel_world_size()
                self.masses.update(zip((b.layer_number for b in self.blocks), stacked.tolist()))
        finally:
            for block in self.blocks:
                block.attention.measure_row_mass = False
                block.attention.row_mass = None
            self.module.train(self.was_training)


def qk_grad_squares(module: nn.Module, get_grad: Optional[Callable] = None) -> dict[int, torch.Tensor]:
    """{layer_number: [‖dq‖², ‖dk‖²]} (float64) of the module's blocks, summed over the tensor-parallel ranks' heads.

    `get_grad(param)` returns a parameter's full gradient: `deepspeed.utils.safe_get_full_grad` under ZeRO,
    `param.grad` by default. Call it after backward and before the gradients are zeroed."""
    get_grad = get_grad or (lambda param: param.grad)
    blocks = transformer_blocks(module)
    per_layer = []
    for block in blocks:
        attention = block.attention
        squares = []
        for param in (attention.qkv.weight, attention.qkv.bias):
            if param is None:
                continue
            grad = get_grad(param)
            if grad is None:
                raise RuntimeError(f"qk_grad_norms: layer {block.layer_number}'s QKV parameter has no gradient; "
                                   "call it after backward and before the gradients are zeroed")
            q_grad, k_grad, _ = attention.split_qkv(grad.detach().double())
            squares.append(torch.stack([q_grad.square().sum(), k_grad.square().sum()]))
        per_layer.append(torch.stack(squares).sum(dim=0))
    if not blocks:
        return {}
    summed = all_reduce_sum(torch.stack(per_layer), tensor_parallel_group())
    return {block.layer_number: row for block, row in zip(blocks, summed)}


def build_model(model_config: ModelConfig, padded_vocab_size: int, seed: int = 0) -> GPTModel:
    return GPTModel(gpt_layers(model_config, padded_vocab_size), seed)
