"""Megatron's model-parallel RNG tracker: dropout on activations that differ per tensor rank (sequence shards under
sequence parallelism) draws from its own stream, seeded differently on each tensor rank; every other dropout draws
from the default generator, seeded identically on the ranks of a tensor group.

The tracker's stream is a saved generator state swapped in around the draws (`fork`), so it is as cheap as the
default generator on CPU and GPU. `checkpoint` recomputes a layer with the stream as it was in the forward pass, as
Megatron's checkpoint function does; checkpoints save and restore it with `state` / `set_state`.
"""
import contextlib
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from sa_megatron.parallel.topology import sequence_parallel, tensor_parallel_rank

# Megatron's offset between the default seed and the tensor-parallel stream's.
TENSOR_PARALLEL_SEED_OFFSET = 2718

_stream: Optional[dict] = None


def _default_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_default_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def seed_tensor_parallel_stream(seed: int) -> None:
    """Seed the stream with seed + 2718 + tensor rank, leaving the default generator as it was."""
    global _stream
    outside = _default_state()
    torch.manual_seed(seed + TENSOR_PARALLEL_SEED_OFFSET + tensor_parallel_rank())
    _stream = _default_state()
    _set_default_state(outside)


@contextlib.contextmanager
def fork():
    """Draw from the tensor-parallel stream inside the block (seeding it from the default generator if unseeded)."""
    global _stream
    if _stream is None:
        seed_tensor_parallel_stream(int(torch.initial_seed()) % 2**32)
    outside = _default_state()
    _set_default_state(_stream)
    try:
        yield
    finally:
        _stream = _default_state()
        _set_default_state(outside)


def state() -> Optional[dict]:
    """The stream's generator states (None until seeded), for checkpoints."""
    return None if _stream is None else {name: tensor.clone() for name, tensor in _stream.items()}


def set_state(saved: Optional[dict]) -> None:
    global _stream
    _stream = None if saved is None else {name: tensor.clone() for name, tensor in saved.items()}


def _recompute_contexts():
    """torch.utils.checkpoint's context pair: the recomputation sees the stream as the forward pass saw it."""
    forward_stream = state()

    @contextlib.contextmanager
    def recompute():
        current = state()
        set_state(forward_stream)
        try:
            yield
        finally:
            set_state(current)

    return contextlib.nullcontext(), recompute()


def checkpoint(function, *args):
    """Activation checkpointing of `function(*args)` that replays both random streams exactly."""
    return torch_checkpoint(function, *args, use_reentrant=False, context_fn=_recompute_contexts)


class ShardedDropout(nn.Dropout):
    """Dropout on activations that may differ per tensor rank: under sequence parallelism (each rank holds other
    tokens) it draws from the tensor-parallel stream; otherwise it is plain dropout on the default generator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.p > 0 and sequence_parallel()):
            return super().forward(x)
        with fork():
            return super().forward(x)
