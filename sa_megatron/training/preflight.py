"""Everything checked before a run touches DeepSpeed: config rules, tokenizer, vocabulary."""

import dataclasses

from sa_megatron.config import Config, padded_vocab_size, validate
from sa_megatron.errors import ConfigError


def check_run_config(config: Config, world_size: int) -> None:
    """`validate` plus the rules specific to training with this trainer."""
    validate(config, world_size)
    p = config.parallel
    if p.tensor_parallel > 1 or p.pipeline_parallel > 1:
        raise ConfigError(
            f"parallel.tensor_parallel={p.tensor_parallel} / pipeline_parallel={p.pipeline_parallel}: "
            "`sa-megatron train` runs data parallelism (with ZeRO) only so far; set both to 1"
        )
    if config.checkpoint.keep_last < 1:
        raise ConfigError(f"checkpoint.keep_last must be at least 1, got {config.checkpoint.keep_last}")
    if config.tokenizer.model is None:
        raise ConfigError("tokenizer.model is not set: give the sentencepiece .model the data was tokenized with")


def resolve_vocab(config: Config, tokenizer) -> tuple[Config, int]:
    """The config with model.vocab_size filled in from the tokenizer, and the padded embedding size."""
    vocab = config.model.vocab_size
    if vocab is None:
        vocab = tokenizer.vocab_size
    elif vocab < tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size ({vocab}) is smaller than the vocabulary of tokenizer {config.tokenizer.model} "
            f"({tokenizer.vocab_size}); raise it or leave it null to use the tokenizer's"
        )
    resolved = dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=vocab))
    m = resolved.model
    return resolved, padded_vocab_size(vocab, m.make_vocab_size_divisible_by, config.parallel.tensor_parallel)
