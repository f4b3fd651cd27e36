"""Every cross-field rule of the config, in one place, each failing with a message that says how to fix it."""

import dataclasses
import math
import os
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
    """Raise ConfigError on the first broken rule. `config show` and `train` both run this; only `train` knows the
    world size, which enables the rules about it (ranks, batch divisibility). Field ranges come first, so a value
    out of its range is reported as that, not as a rule between it and another field."""
    m, p, t = config.model, config.parallel, config.training
    check_ranges(config)
    if t.precision == "bf16" and p.zero_stage == 0:
        # DeepSpeed's stage-0 bf16 path accumulates gradients in bf16; ZeRO-1 keeps fp32 gradients and master weights.
        raise ConfigError("training.precision=bf16 needs parallel.zero_stage >= 1 (1 costs no extra communication)")
    if t.eval_interval and t.eval_iters <= 0:
        raise ConfigError(f"training.eval_iters must be positive when training.eval_interval > 0, got {t.eval_iters} "
                          "(set training.eval_interval=0 to disable validation)")
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
    if m.max_position_embeddings is not None and m.position_encoding == "learned" and m.max_position_embeddings < m.seq_length:
        raise ConfigError(
            f"model.max_position_embeddings ({m.max_position_embeddings}) is smaller than model.seq_length ({m.seq_length})"
        )
    check_weights(config.data.weights, len(config.data.paths))
    parse_split(config.data.split)
    if config.optimizer.min_lr > config.optimizer.lr:
        raise ConfigError(f"optimizer.min_lr ({config.optimizer.min_lr}) exceeds optimizer.lr ({config.optimizer.lr})")
    name = config.logging.run_name
    if name is not None and (name in ("", ".", "..") or "/" in name or os.sep in name):
        raise ConfigError(f"logging.run_name {name!r} must be one folder name (no '/', not '.' or '..'): the run's "
                          "TensorBoard events go to tensorboard_dir/run_name")
    if world_size is not None:
        dp = data_parallel_size(config, world_size)
        if t.global_batch_size % (t.micro_batch_size * dp):
            per_step = t.micro_batch_size * dp
            larger = -(-t.global_batch_size // per_step) * per_step
            micro = max(m for m in range(1, t.micro_batch_size + 1) if t.global_batch_size % (m * dp) == 0) \
                if t.global_batch_size % dp == 0 else None
            fixes = [f"training.global_batch_size={larger}"]
            if micro is not None:
                fixes.append(f"training.micro_batch_size={micro}")
            raise ConfigError(
                f"training.global_batch_size ({t.global_batch_size}) must be divisible by "
                f"micro_batch_size × data_parallel = {t.micro_batch_size} × {dp}: e.g. set {' or '.join(fixes)}"
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


def check_ranges(config: Config) -> None:
    """Every int/float field against the valid range its schema entry states (`schema.Range`)."""
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        for key in dataclasses.fields(values):
            value, valid = getattr(values, key.name), key.metadata.get("valid")
            if valid is None or value is None:
                continue
            # Every comparison with nan is false: test finiteness first, and name it.
            if (isinstance(value, float) and not math.isfinite(value)) or value not in valid:
                raise ConfigError(f"{section.name}.{key.name} is {value}, outside its valid range {valid}")
