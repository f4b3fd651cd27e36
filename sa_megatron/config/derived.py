"""What a config implies without stating it: where the run's TensorBoard logs go and what the run is called."""

import dataclasses
import os
from pathlib import Path
from typing import Optional

from sa_megatron.config.schema import Config

TENSORBOARD_SUBDIR = "tensorboard"  # under checkpoint.save_dir, when logging.tensorboard_dir is null


def run_name(config: Config) -> str:
    """logging.run_name, else the checkpoint folder's name (ckpt/125M -> 125M), else "run"."""
    if config.logging.run_name:
        return config.logging.run_name
    save_dir = config.checkpoint.save_dir
    return (Path(os.path.abspath(save_dir)).name if save_dir else "") or "run"


def tensorboard_logdir(config: Config) -> Optional[str]:
    """The folder to open with `tensorboard --logdir`: logging.tensorboard_dir, else SAVE_DIR/tensorboard; None when
    logging.tensorboard is false or there is neither folder."""
    logging, save_dir = config.logging, config.checkpoint.save_dir
    if not logging.tensorboard:
        return None
    if logging.tensorboard_dir:
        return logging.tensorboard_dir
    return str(Path(save_dir) / TENSORBOARD_SUBDIR) if save_dir else None


def tensorboard_run_dir(config: Config) -> Optional[Path]:
    """Where this run's event files go: one named folder per run, so TensorBoard shows the run by its name."""
    logdir = tensorboard_logdir(config)
    return Path(logdir) / run_name(config) if logdir else None


def with_logging_resolved(config: Config) -> Config:
    """The config with logging.tensorboard_dir and run_name filled in, as the trainer records it in checkpoints (so
    `eval --tensorboard-dir` finds the run's folder whatever directory it runs from)."""
    logging = dataclasses.replace(config.logging, tensorboard_dir=tensorboard_logdir(config), run_name=run_name(config))
    return dataclasses.replace(config, logging=logging)
