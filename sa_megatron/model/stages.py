"""The first and last pipeline stages: token (+ learned position) embedding, and final norm + output head.

TIED EMBEDDINGS: with `tie_embeddings` the head holds a reference to the embedding stage's `word_embeddings`
module and multiplies by its weight — one parameter, reached from both stages (ZeRO-3 gathers it on access; see
tests/model/test_zero3.py). A pipeline split that puts the two stages on different ranks must replace this shared
reference with DeepSpeed's TiedLayerSpec.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sa_megatron.config.schema import ModelConfig
from sa_megatron.model.block import build_norm
from sa_megatron.model.init import InitMethods
from sa_megatron.parallel import VocabParallelEmbedding, tensor_parallel_group
from sa_megatron.parallel.comm import copy_to_tensor_parallel_region
from sa_megatron.parallel.layers import sharded_parameter


class EmbeddingStage(nn.Module):
    """tokens (B, N) → hidden (B, N, h)."""

    def __init__(self, config: ModelConfig, padded_vocab_size: int, init: InitMethods):
        super().__init__()
        hidden = config.hidden_size
        self.word_embeddings = VocabParallelEmbedding(padded_vocab_size, hidden, init_method=init.input_side)
        if config.position_encoding == "learned":
            # Replicated on every tensor-parallel rank (Megatron does not split the position table).
            self.position_embeddings = nn.Embedding(config.max_position_embeddings or config.seq_length, hidden)
            init.input_side(self.position_embeddings.weight)
        else:
            self.position_embeddings = None
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.word_embeddings(tokens)
        if self.position_embeddings is not None:
            seq = tokens.shape[-1]
            if seq > self.position_embeddings.num_embeddings:
                raise ValueError(f"sequence of {seq} tokens exceeds the learned position table "
                                 f"({self.position_embeddings.num_embeddings} = model.max_position_embeddings)")
            hidden = hidden + self.position_embeddings(torch.arange(seq, device=tokens.device))
        return self.dropout(hidden)


class OutputStage(nn.Module):
    """hidden (B, N, h) → logits (B, N, padded_vocab // tp): this rank's vocabulary slice, as
    `vocab_parallel_cross_entropy` expects (the whole padded vocabulary at TP = 1)."""

    def __init__(self, config: ModelConfig, padded_vocab_size: int, init: InitMethods,
                 tied_embedding: Optional[VocabParallelEmbedding]):
        super().__init__()
        self.group = tensor_parallel_group()
        self.final_norm = build_norm(config)
        self.tied_embedding = tied_embedding
        if tied_embedding is None:
            self.head_weight = sharded_parameter((padded_vocab_size, config.hidden_size), 0, init.input_side)

    def output_weight(self) -> torch.Tensor:
        return self.tied_embedding.weight if self.tied_embedding is not None else self.head_weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = copy_to_tensor_parallel_region(self.final_norm(hidden), self.group)
        return F.linear(hidden, self.output_weight())
