"""How long an input a trained model accepts, which decides length extrapolation and generation windows."""

from typing import Optional

from sa_megatron.config.schema import ModelConfig
from sa_megatron.errors import UserInputError


def max_context(model_config: ModelConfig) -> Optional[int]:
    """Rows of the learned position table; None for every other encoding: those have no length limit."""
    if model_config.position_encoding == "learned":
        return model_config.max_position_embeddings or model_config.seq_length
    return None


# Rope, alibi, kerple and none models have no hard limit; `eval` measures them up to 4x the training length.
EXTRAPOLATION_FACTOR = 4


def generation_context(model_config: ModelConfig, requested: Optional[int] = None) -> int:
    """Tokens (prompt + new) that generation attends over: `requested` (--max-context), else the learned position
    table, else EXTRAPOLATION_FACTOR x the training seq_length. Learned positions cannot go past their table."""
    limit = max_context(model_config)
    if requested is None:
        return limit or EXTRAPOLATION_FACTOR * model_config.seq_length
    if limit is not None and requested > limit:
        raise UserInputError(f"--max-context {requested} exceeds the learned position table of {limit} rows "
                             f"(model.max_position_embeddings / model.seq_length); use at most {limit}")
    if requested < 2:
        raise UserInputError(f"--max-context {requested} leaves no room: expected at least 2 (a prompt token and "
                             "a new one)")
    return requested


def check_length(model_config: ModelConfig, length: int) -> None:
    limit = max_context(model_config)
    if limit is not None and length > limit:
        raise UserInputError(
            f"evaluation length {length} exceeds the learned position table of {limit} rows "
            f"(model.max_position_embeddings / model.seq_length); learned positions cannot extrapolate — "
            f"use lengths <= {limit}, or a rope, alibi, kerple or none model"
        )
