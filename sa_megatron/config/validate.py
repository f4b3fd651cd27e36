"""Every cross-field rule of the config, in one place, each failing with a message that says how to fix it."""

import dataclasses
import math
from typing import Optional

from sa_megatron.config.schema import Config
from sa_megatron.errors import ConfigError


def padded_vocab_size(vocab_size: int, divisible_by: int, tensor_parallel: int) -> int:
    """Megatron's padding: round the vocab up so every tensor-parallel shard has equal, aligned rows."""
    multiple = divisible_by * tensor_parallel
    return -(-vocab_size // multiple) * multiple


def data_parallel_size(config: Config, world_size: int) -> int:
    tp, pp = config.parallel.tensor_parallel, config.parallel.pipeline_parallel
    if world_size % (tp * pp):
        how = (f"launch a multiple of {tp * pp} ranks, e.g. torchrun --nproc_per_node {tp * pp}" if world_size < tp * pp
               else f"launch a multiple of {tp * pp} ranks")
        raise ConfigError(
            f"world size {world_size} is not tensor_parallel × pipeline_parallel × data_parallel = "
            f"{tp} × {pp} × data_parallel for a whole data_parallel: {how}"
        )
    return world_size // (tp * pp)


def validate(config: Config, world_size: Optional[int] = None) -> None:
    """Raise ConfigError on the first broken rule; `world_size` enables the batch-size rule."""
    m, p, t = config.model, config.parallel, config.training
    _finite_floats(config)
    _positive(m, "model", "num_layers", "hidden_size", "num_attention_heads", "seq_length", "make_vocab_size_divisible_by",
              "ffn_hidden_size", "max_position_embeddings", "vocab_size")
    _positive(p, "parallel", "tensor_parallel", "pipeline_parallel", "init_timeout_s")
    _positive(t, "training", "train_iters", "micro_batch_size", "global_batch_size", "max_bad_steps_in_a_row")
    _positive(config.tokenizer, "tokenizer", "vocab_size")
    _positive(config.logging, "logging", "log_interval")
    _non_negative(t, "training", "eval_interval")
    _non_negative(config.checkpoint, "checkpoint", "save_interval")
    _non_negative(config.schedule, "schedule", "warmup_iters", "decay_iters")
    if t.eval_interval and t.eval_iters <= 0:
        raise ConfigError(f"training.eval_iters must be positive when training.eval_interval > 0, got {t.eval_iters} "
                          "(set training.eval_interval=0 to disable validation)")
    if not 0 <= t.seed < 2**32:
        raise ConfigError(f"training.seed must be in [0, 2**32), got {t.seed}")  # numpy's seed range
    if m.hidden_size % m.num_attention_heads:
        raise ConfigError(
            f"model.hidden_size ({m.hidden_size}) must be divisible by model.num_attention_heads ({m.num_attention_heads})"
        )
    if m.num_attention_heads % p.tensor_parallel:
        raise ConfigError(
            f"model.num_attention_heads ({m.num_attention_heads}) must be divisible by parallel.tensor_parallel ({p.tensor_parallel})"
        )
    if m.num_layers % p.pipeline_parallel:
        raise ConfigError(
            f"model.num_layers ({m.num_layers}) must be divisible by parallel.pipeline_parallel ({p.pipeline_parallel})"
        )
    if p.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"parallel.zero_stage must be 0, 1, 2 or 3, got {p.zero_stage}")
    if p.pipeline_parallel > 1 and p.zero_stage >= 2:
        raise ConfigError(
            f"parallel.zero_stage={p.zero_stage} cannot be combined with pipeline_parallel={p.pipeline_parallel}: "
            "DeepSpeed's pipeline engine supports ZeRO stage 0 or 1 only"
        )
    if p.tensor_parallel > 1 and p.zero_stage == 3:
        raise ConfigError(
            f"parallel.zero_stage=3 cannot be combined with tensor_parallel={p.tensor_parallel}: its checkpoints "
            "cannot be merged across tensor ranks; use zero_stage 1 or 2 (tensor parallelism already splits weights)"
        )
    if p.sequence_parallel and m.seq_length % p.tensor_parallel:
        raise ConfigError(
            f"parallel.sequence_parallel splits model.seq_length ({m.seq_length}) over tensor_parallel="
            f"{p.tensor_parallel} ranks: make it a multiple of {p.tensor_parallel}"
        )
    if m.position_encoding == "dapev2-kerple":
        if m.attention_backend not in ("auto", "eager"):
            raise ConfigError(
                "model.position_encoding='dapev2-kerple' needs the full N×N score matrix and runs on the eager "
                f"attention path only; set model.attention_backend to 'auto' or 'eager' (got '{m.attention_backend}')"
            )
        if p.tensor_parallel > 1:
            raise ConfigError(
                "model.position_encoding='dapev2-kerple' mixes all heads in its score MLP and cannot be split "
                f"over parallel.tensor_parallel={p.tensor_parallel}; use tensor_parallel=1"
            )
    if t.precision == "fp16" and m.attention in ("sa", "sa_raw"):
        raise ConfigError(
            f"training.precision='fp16' cannot train model.attention='{m.attention}': its score gradient scales with "
            "1/delta and overflows fp16 on rows with near-zero scores; use training.precision='bf16' (same memory, "
            "fp32's exponent range) or model.attention='softmax'"
        )
    if config.checkpoint.keep_last < 1:
        raise ConfigError(f"checkpoint.keep_last must be at least 1, got {config.checkpoint.keep_last}")
    if m.max_position_embeddings is not None and m.position_encoding == "learned" and m.max_position_embeddings < m.seq_length:
        raise ConfigError(
            f"model.max_position_embeddings ({m.max_position_embeddings}) is smaller than model.seq_length ({m.seq_length})"
        )
    for name in ("hidden_dropout",):
        if not 0.0 <= getattr(m, name) < 1.0:
            raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(m, name)}")
    check_weights(config.data.weights, len(config.data.paths))
    parse_split(config.data.split)
    if config.optimizer.min_lr > config.optimizer.lr:
        raise ConfigError(f"optimizer.min_lr ({config.optimizer.min_lr}) exceeds optimizer.lr ({config.optimizer.lr})")
    if world_size is not None:
        dp = data_parallel_size(config, world_size)
        if t.global_batch_size % (t.micro_batch_size * dp):
            raise ConfigError(
                f"training.global_batch_size ({t.global_batch_size}) must be divisible by "
                f"micro_batch_size × data_parallel = {t.micro_batch_size} × {dp}"
            )


def parse_split(split: str) -> list[float]:
    """Megatron's data.split "969,30,1" -> [train, valid, test] shares; the one parser of it (the builder uses it too)."""
    try:
        shares = [float(part) for part in split.split(",")]
    except ValueError:
        shares = []
    if len(shares) != 3 or not _finite_non_negative(shares):
        raise ConfigError(f"data.split must be three finite, non-negative numbers, not all zero, like '969,30,1'; got '{split}'")
    return shares


def check_weights(weights: Optional[list], num_paths: int) -> None:
    """data.weights: None (blend by size), or one finite, non-negative weight per path, not all zero."""
    if weights is None:
        return
    if not _finite_non_negative(weights):
        raise ConfigError(f"data.weights must be finite, non-negative numbers, not all zero, got {weights}")
    if len(weights) != num_paths:
        raise ConfigError(f"data.weights has {len(weights)} entries but data.paths has {num_paths}")


def _finite_non_negative(numbers) -> bool:
    # float() reads "nan" and "inf", and every comparison with nan is false, so test finiteness explicitly.
    return all(math.isfinite(x) and x >= 0 for x in numbers) and sum(numbers) > 0


def _finite_floats(config: Config) -> None:
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        for key in dataclasses.fields(values):
            value = getattr(values, key.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section.name}.{key.name} must be a finite number, got {value}")


def _positive(section, name: str, *keys: str) -> None:
    """Each key must be > 0; an optional key left at None (meaning "derive it") passes."""
    for key in keys:
        value = getattr(section, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{name}.{key} must be positive, got {value}")


def _non_negative(section, name: str, *keys: str) -> None:
    for key in keys:
        value = getattr(section, key)
        if value is not None and value < 0:
            raise ConfigError(f"{name}.{key} must be non-negative, got {value}")
