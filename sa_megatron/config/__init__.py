"""Typed, documented run configuration (see `schema.py` for every field)."""

from sa_megatron.config.derived import run_name, tensorboard_logdir, tensorboard_run_dir, with_logging_resolved
from sa_megatron.config.loader import from_dict, load_config, to_dict
from sa_megatron.config.schema import Config
from sa_megatron.config.validate import data_parallel_size, padded_vocab_size, validate

__all__ = ["Config", "load_config", "from_dict", "to_dict", "validate", "padded_vocab_size", "data_parallel_size",
           "run_name", "tensorboard_logdir", "tensorboard_run_dir", "with_logging_resolved"]
