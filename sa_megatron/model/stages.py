"""The layers around the transformer blocks: token embedding, embedding output, final norm and output head.

TIED EMBEDDINGS: with `tie_embeddings` the first and the last layer are the same `VocabParallelEmbedding`, used as
a lookup by the first and as the head's weight by the last (`tied_output_head`). In one process they are one
module; across pipeline stages DeepSpeed's TiedLayerSpec keeps a copy on both stages and sums their gradients.

SEQUENCE PARALLELISM: `EmbeddingOutput` hands the blocks this rank's part of the sequence, and the head gathers the
whole sequence back before the vocabulary-parallel matmul.
"""
import torch
import torch.nn.functional as F
from torch import nn

from sa_megatron.config.schema import ModelConfig
from sa_megatron.model.norm import build_norm, sequence_norm
from sa_megatron.model.init import InitMethods
from sa_megatron.parallel import VocabParallelEmbedding, tensor_parallel_group
from sa_megatron.parallel.comm import scatter_to_sequence_parallel_region
from sa_megatron.parallel.layers import gather_input, sharded_parameter
from sa_megatron.parallel.rng_tracker import ShardedDropout
from sa_megatron.parallel.topology import sequence_parallel


class EmbeddingOutput(nn.Module):
    """Token embeddings (B, N, h) → + learned positions → this rank's sequence part (under sequence parallelism)
    → dropout."""

    def __init__(self, config: ModelConfig, init: InitMethods):
        super().__init__()
        self.group = tensor_parallel_group()
        if config.position_encoding == "learned":
            # Replicated on every tensor-parallel rank (Megatron does not split the position table).
            self.position_embeddings = nn.Embedding(config.max_position_embeddings or config.seq_length,
                                                    config.hidden_size)
            init.input_side(self.position_embeddings.weight)
        else:
            self.position_embeddings = None
        self.dropout = ShardedDropout(config.hidden_dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.position_embeddings is not None:
            seq = hidden.shape[1]
            if seq > self.position_embeddings.num_embeddings:
                raise ValueError(f"sequence of {seq} tokens exceeds the learned position table "
                                 f"({self.position_embeddings.num_embeddings} = model.max_position_embeddings)")
            hidden = hidden + self.position_embeddings(torch.arange(seq, device=hidden.device))
        if sequence_parallel():
            hidden = scatter_to_sequence_parallel_region(hidden, self.group)
        return self.dropout(hidden)


class FinalNorm(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.group = tensor_parallel_group()
        self.norm = build_norm(config)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return sequence_norm(self.norm, hidden, self.group)


def output_logits(hidden: torch.Tensor, weight: torch.Tensor, group) -> torch.Tensor:
    """hidden (B, N or N/tp, h) → this rank's vocabulary slice of the logits (B, N, padded_vocab // tp), as
    `vocab_parallel_cross_entropy` expects (the whole padded vocabulary at TP = 1)."""
    return F.linear(gather_input(hidden, group), weight)


class OutputHead(nn.Module):
    """An untied output head with its own (vocabulary-sharded) weight."""

    def __init__(self, config: ModelConfig, padded_vocab_size: int, init: InitMethods):
        super().__init__()
        self.group = tensor_parallel_group()
        self.head_weight = sharded_parameter((padded_vocab_size, config.hidden_size), 0, init.input_side)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return output_logits(hidden, self.head_weight, self.group)


def tied_output_head(embedding: VocabParallelEmbedding, hidden: torch.Tensor) -> torch.Tensor:
    """The head of a tied model: the token embedding's weight as the output matrix."""
    return output_logits(hidden, embedding.weight, embedding.group)
