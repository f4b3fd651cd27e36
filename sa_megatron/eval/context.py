"""How long an input a trained model accepts, which decides length extrapolation and generation windows."""

from typing import Optional

from sa_megatron.config.schema import ModelConfig
from sa_megatron.errors import UserInputError


def max_context(model_config: ModelConfig) -> Optional[int]:
    """Rows of the learned position table; None for every other encoding: those have no length limit."""
    if model_config.position_encoding == "learned":
        return model_config.max_position_embeddings or model_config.seq_length
    return None


def check_length(model_config: ModelConfig, length: int) -> None:
    limit = max_context(model_config)
    if limit is not None and length > limit:
        raise UserInputError(
            f"evaluation length {length} exceeds the learned position table of {limit} rows "
            f"(model.max_position_embeddings / model.seq_length); learned positions cannot extrapolate — "
            f"use lengths <= {limit}, or a rope, alibi, kerple or none model"
        )
