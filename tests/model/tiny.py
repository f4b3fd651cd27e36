"""Tiny model configs shared by the model tests."""
import torch

from sa_megatron.config.schema import ModelConfig

VOCAB = 64  # already a multiple of make_vocab_size_divisible_by below, so it is its own padded size


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16, vocab_size=VOCAB,
                  make_vocab_size_divisible_by=64, attention_backend="eager")
    fields.update(overrides)
    return ModelConfig(**fields)


def random_tokens(batch=2, seq=16, seed=0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))
