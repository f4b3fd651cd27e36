"""Everything checked before a run touches DeepSpeed: config rules, tokenizer, vocabulary."""

import dataclasses
from pathlib import Path

from sa_megatron.config import Config, padded_vocab_size, validate
from sa_megatron.errors import ConfigError


def check_run_config(config: Config, world_size: int) -> None:
    """`validate` (the rules `config show` runs too) plus what only a run on this machine can check: the world size,
    fp16 support of this device, a creatable save_dir, a tokenizer."""
    validate(config, world_size)
    _check_fp16_device(config)
    if config.checkpoint.save_dir:
        try:
            Path(config.checkpoint.save_dir).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"checkpoint.save_dir {config.checkpoint.save_dir} cannot be created: {err.strerror}") from None
    if config.tokenizer.model is None:
        raise ConfigError("tokenizer.model is not set: give the sentencepiece .model the data was tokenized with")


def _check_fp16_device(config: Config) -> None:
    if config.training.precision == "fp16":
        from deepspeed.accelerator import get_accelerator

        if not get_accelerator().is_fp16_supported():
            raise ConfigError(
                f"training.precision=fp16 is not supported on this {get_accelerator().device_name()} device; "
                "use bf16 or fp32"
            )


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
