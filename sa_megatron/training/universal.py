"""DeepSpeed's universal checkpoints: how a checkpoint moves to another tensor, pipeline or data-parallel size.

Every checkpoint records DeepSpeed's `universal_checkpoint_info`: for each parameter of the whole model, how it is
split over tensor ranks (replicated, by rows, by columns, or by padded vocabulary rows), read from the
`partition_dim` marks the parallel layers put on their parameters. `sa-megatron checkpoint convert` runs DeepSpeed's
`ds_to_universal` on a checkpoint, which merges the shards of weights and optimizer states into whole tensors; a run
at another layout loads those (DeepSpeed's `load_universal`) and slices them for its own ranks.
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from sa_megatron.config.schema import ModelConfig
from sa_megatron.errors import CheckpointError

UNIVERSAL_DIR = "universal"  # inside step_N, next to the engine folder it was converted from
UNIVERSAL_CHECKPOINT_INFO = "universal_checkpoint_info"  # deepspeed.checkpoint.constants' key (importing it is slow)


def universal_checkpoint_info(config: ModelConfig, padded_vocab_size: int) -> dict:
    """DeepSpeed's description of the model's tensor-parallel splits, parameter by parameter (exact names)."""
    from deepspeed.checkpoint import constants as ds

    from sa_megatron.model import build_model
    from sa_megatron.model.stages import OutputHead
    from sa_megatron.parallel import VocabParallelEmbedding

    # Names and marks only: on the meta device a 2.7B model costs nothing. Building seeds each layer, so the
    # generators are put back as they were (a resumed run has just restored them).
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(config, padded_vocab_size)
    vocabulary = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, VocabParallelEmbedding)}
    vocabulary |= {f"{name}.head_weight" for name, module in model.named_modules() if isinstance(module, OutputHead)}
    replicated, rows = [], []
    for name, param in model.named_parameters():
        if not getattr(param, "tensor_model_parallel", False):
            replicated.append(name)
        elif param.partition_dim == 1:
            rows.append(name)
    exact = lambda names: [re.escape(name) + "$" for name in sorted(names)]  # noqa: E731 - DeepSpeed uses re.match
    return {
        ds.TP_REPLICATED_PARAMETER_PATTERNS: exact(replicated),
        ds.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS: exact(rows),
        ds.VOCABULARY_PARAMETER_PATTERNS: exact(vocabulary),
        ds.PIPELINE_REPLICATED_PARAMETER_PATTERNS: exact(n for n in vocabulary if n.startswith("tied_modules.")),
        "original_vocab_size": config.vocab_size,
    }


def run_showing_progress(command: list) -> subprocess.CompletedProcess:
    """Run `command` with its output on our stderr when that is a terminal (DeepSpeed's converter names its steps and
    draws bars over shards and parameters: half a minute at 125M parameters, minutes for billions), else captured."""
    if sys.stderr.isatty():
        return subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr)
    return subprocess.run(command, capture_output=True, text=True)


def convert_to_universal(checkpoint: Path) -> Path:
    """Write `checkpoint/universal` (step_N/universal) from its engine files with DeepSpeed's converter; returns it.

    The converter writes into a temporary folder renamed at the end, so a crash leaves the checkpoint as it was."""
    from sa_megatron.training import checkpoint_files as files

    final, temp = checkpoint / UNIVERSAL_DIR, checkpoint / f".tmp-{UNIVERSAL_DIR}"
    shutil.rmtree(temp, ignore_errors=True)
    # -W: runpy's warning that `-m` finds the converter already imported by its package is noise to a user.
    result = run_showing_progress(
        [sys.executable, "-W", "ignore::RuntimeWarning:runpy", "-m", "deepspeed.checkpoint.ds_to_universal",
         "--input_folder", str(checkpoint / files.ENGINE_TAG), "--output_folder", str(temp)])
    if result.returncode != 0:
        shutil.rmtree(temp, ignore_errors=True)
        if result.stderr is None:  # shown on the terminal
            why = "its output is above"
        else:
            why = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise CheckpointError(f"DeepSpeed could not convert {checkpoint} to a universal checkpoint: {why}")
    (checkpoint / "latest_universal").unlink(missing_ok=True)  # the converter's pointer to temp: we load by name
    shutil.rmtree(final, ignore_errors=True)
    files.fsync_tree(temp)
    temp.rename(final)
    return final
