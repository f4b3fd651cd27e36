"""The NaN/inf policy: a step whose loss or gradient norm is not finite changes nothing, on every rank.

DeepSpeed already skips such a step inside its ZeRO 1-3 and bf16 optimizers (a non-finite global gradient norm is
treated like an fp16 overflow: gradients cleared, no update, the lr scheduler not advanced). fp32 at ZeRO-0 hands
the gradients straight to torch's AdamW, so `StepGate` does the same there, in the same way: it removes the
gradients (AdamW leaves a parameter without one untouched: no moment, weight-decay or step-count update) and raises
the optimizer's `overflow` flag, which DeepSpeed's engine reads after every step to skip the lr scheduler and count
the step as skipped. The loop then reads `engine.was_step_applied()` whatever the engine, and stops the run after
`training.max_bad_steps` bad steps in a row (`BadStepCounter`).
"""

import math
from typing import Optional

import torch

from sa_megatron.training.distributed import all_ranks
from sa_megatron.training.grad_norm import clip_gradients, global_grad_norm

# The exit code of a run stopped by this policy: neither 0 (done, or stopped by a signal: Slurm may requeue it)
# nor 2 (bad input).
DIVERGED_EXIT_CODE = 3


class NonFiniteState(Exception):
    """The weights or optimizer state hold NaN/inf: saving them would destroy the last good checkpoint's value."""


class StepGate:
    """fp32 at ZeRO-0: decides, identically on every rank, whether the coming optimizer step may run, and clips the
    gradients of a step that runs by the global norm it computed for that (`clip_grad` > 0; DeepSpeed's own
    clipping is off there)."""

    def __init__(self, engine, clip_grad: float):
        self.engine, self.clip_grad = engine, clip_grad
        self.grad_norm: Optional[float] = None  # the global norm of the last step's gradients, before clipping

    @torch.no_grad()
    def decide(self, local_loss_is_finite: bool) -> bool:
        """Call after the gradients are reduced, right before the optimizer step; False vetoes that step.

        `local_loss_is_finite`: what this rank knows of the loss (a pipeline's loss lives on its last stage only),
        so the flag goes through one all-reduce over every rank."""
        self.grad_norm = global_grad_norm(self.engine.module)
        finite = all_ranks(local_loss_is_finite and math.isfinite(self.grad_norm))
        optimizer = self.engine.optimizer
        optimizer.overflow = not finite
        if not finite:
            for param in self.engine.module.parameters():
                param.grad = None
        elif self.clip_grad > 0:
            clip_gradients(self.engine.module, self.clip_grad, self.grad_norm)
        return finite


def needs_gate(config) -> bool:
    """Only fp32 at ZeRO-0 lacks DeepSpeed's own skip (fp16 has its loss scaler, bf16 and ZeRO 1-3 their checks)."""
    return config.parallel.zero_stage == 0 and config.training.precision == "fp32"


class BadStepCounter:
    """Counts bad steps in a row; a good step resets the count."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.total = limit, 0, 0

    def record(self, bad: bool) -> bool:
        """Whether the run must stop now."""
        self.in_a_row = self.in_a_row + 1 if bad else 0
        self.total += bad
        return self.in_a_row >= self.limit


def is_bad_step(loss: float, step_applied: bool, precision: str) -> bool:
    """A non-finite loss, or a step the optimizer skipped (a non-finite gradient norm). Under fp16 a skipped step is
    the loss scaler's routine overflow, not a sign of divergence; only the loss counts there."""
    return not math.isfinite(loss) or (precision != "fp16" and not step_applied)


@torch.no_grad()
def state_is_finite(engine) -> bool:
    """Whether this rank's weights and optimizer state (master weights and moments included) are all finite."""
    tensors = list(engine.module.parameters())
    optimizer = engine.optimizer
    while optimizer is not None:  # DeepSpeed's wrappers hold the torch optimizer (and its fp32 partitions) inside
        tensors += [p for group in getattr(optimizer, "param_groups", []) for p in group["params"]]
        tensors += [v for state in getattr(optimizer, "state", {}).values() if isinstance(state, dict)
                    for v in state.values() if torch.is_tensor(v)]
        optimizer = getattr(optimizer, "optimizer", None)
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
