"""Which samples each rank trains on: Megatron's pretraining-sampler order, a pure function of the batch index.

Global batch g covers samples [g·GBS, (g+1)·GBS). It is cut into micro-steps of micro_batch × dp consecutive
samples; in each, data-parallel rank r takes the contiguous slice [r·micro_batch, (r+1)·micro_batch). A run
resumed after `consumed_samples = g·GBS` therefore sees exactly global batch g next.
"""

import numpy as np
import torch
import torch.distributed as dist

from sa_megatron.config import Config
from sa_megatron.errors import ConfigError, DataError
from sa_megatron.training.distributed import any_rank


def sample_counts(config: Config) -> tuple[int, int, int]:
    """Samples the run reads from (train, valid, test): every step plus every evaluation incl. the final one."""
    t = config.training
    train = t.train_iters * t.global_batch_size
    valid = (t.train_iters // t.eval_interval + 1) * t.eval_iters * t.global_batch_size if t.eval_interval else 0
    return train, valid, 0


def build_datasets(config: Config, tokenizer_sha256: str):
    """(train, valid) datasets of data made by the run's tokenizer; rank 0 builds the index caches first so the
    other ranks only read them."""
    from sa_megatron.data import build_gpt_datasets

    if not config.data.paths:
        raise ConfigError("data.paths is empty: give at least one dataset prefix (PREFIX.bin + PREFIX.idx)")

    def build():
        return build_gpt_datasets(
            config.data.paths, config.data.weights, config.data.split, config.model.seq_length,
            config.training.seed, num_samples=sample_counts(config), cache_dir=config.data.cache_dir,
            vocab_size=config.model.vocab_size, tokenizer_sha256=tokenizer_sha256,
        )

    failure = None
    if dist.get_rank() == 0:
        try:
            datasets = build()
        except Exception as err:  # noqa: BLE001 - whatever it is, the other ranks must learn of it, not hang
            failure = err
    # A flag instead of a barrier, so the other ranks stop too (rather than hang) when rank 0 fails.
    if any_rank(failure is not None):
        raise failure or DataError("rank 0 could not build the datasets (its error names the cause)")
    if dist.get_rank() != 0:
        datasets = build()
    train, valid, _ = datasets
    if train is None:
        raise ConfigError(f"data.split '{config.data.split}' leaves no documents for training")
    if config.training.eval_interval and valid is None:
        raise ConfigError(
            f"data.split '{config.data.split}' leaves no validation documents; give the valid part a share "
            "or set training.eval_interval=0"
        )
    return train, valid


def micro_batches(dataset, batch_index: int, config: Config, dp_rank: int, dp_size: int) -> list[torch.Tensor]:
    """This rank's micro-batches of global batch `batch_index`, each (micro_batch, seq_length + 1) int64."""
    micro, gbs = config.training.micro_batch_size, config.training.global_batch_size
    first = batch_index * gbs
    batches = []
    for chunk_start in range(first, first + gbs, micro * dp_size):
        start = chunk_start + dp_rank * micro
        batches.append(torch.from_numpy(np.stack([dataset[i] for i in range(start, start + micro)])))
    return batches
