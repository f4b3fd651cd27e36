"""Incremental decoding for generation: each block keeps its keys and values, so a step runs the model on the new
tokens only and costs time linear in the tokens so far (a full recompute costs the whole window every step).

Inference only: one process (tensor parallel 1, no sequence parallelism), eval mode, no gradients. The training
forward (`GPTModel.forward`) is untouched; this runs the same layers piece by piece. New queries attend over the
cached keys followed by their own: every attention backend aligns queries to the end of the keys, so the causal
mask, the SA row minimum/maximum over the visible keys and the ALiBi/Kerple distances are those of the full forward.
"""

import torch

from sa_megatron.model.block import TransformerBlock
from sa_megatron.model.gpt import GPTModel
from sa_megatron.model.norm import sequence_norm
from sa_megatron.model.stages import EmbeddingOutput, FinalNorm


def decoder_for(model: GPTModel):
    """A KV-cache decoder, or a full recompute for DAPE-V2, whose score MLP reads the whole (N, N) score matrix."""
    if any(block.attention.dape is not None for block in model.blocks):
        return FullRecompute(model)
    return KVCacheDecoder(model)


class KVCacheDecoder:
    """`step(tokens)` appends tokens (B, n) to the sequence and returns the logits (B, padded vocab) of its last
    position, running each layer on the n new tokens only."""

    def __init__(self, model: GPTModel):
        self.model = model
        self.length = 0  # positions already in the cache
        self.keys: dict[int, torch.Tensor] = {}  # layer_number -> (B, H, length, D)
        self.values: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens
        for layer in self.model.forwards:
            if isinstance(layer, EmbeddingOutput):
                x = self._embedding_output(layer, x)
            elif isinstance(layer, TransformerBlock):
                x = self._block(layer, x)
            elif isinstance(layer, FinalNorm):
                x = layer(x[:, -1:])  # only the last position's logits are sampled
            else:
                x = layer(x)
        self.length += tokens.shape[1]
        return x[:, -1]

    def _embedding_output(self, layer: EmbeddingOutput, hidden: torch.Tensor) -> torch.Tensor:
        table = layer.position_embeddings
        if table is None:
            return layer.dropout(hidden)
        end = self.length + hidden.shape[1]
        if end > table.num_embeddings:
            raise ValueError(f"sequence of {end} tokens exceeds the learned position table "
                             f"({table.num_embeddings} = model.max_position_embeddings)")
        return layer.dropout(hidden + table(torch.arange(self.length, end, device=hidden.device)))

    def _block(self, block: TransformerBlock, x: torch.Tensor) -> torch.Tensor:
        attention, number = block.attention, block.layer_number
        q, k, v = attention.project_qkv(sequence_norm(block.attention_norm, x, block.group), self.length)
        if number in self.keys:
            k = torch.cat((self.keys[number], k), dim=2)
            v = torch.cat((self.values[number], v), dim=2)
        self.keys[number], self.values[number] = k, v
        x = x + block.dropout(attention.project_out(attention.attend(q, k, v)))
        return x + block.dropout(block.mlp(sequence_norm(block.mlp_norm, x, block.group)))


class FullRecompute:
    """The same interface without a cache: every step runs the model over the whole sequence."""

    def __init__(self, model: GPTModel):
        self.model = model
        self.tokens = None

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens = tokens if self.tokens is None else torch.cat((self.tokens, tokens), dim=1)
        return self.model(self.tokens)[:, -1]
