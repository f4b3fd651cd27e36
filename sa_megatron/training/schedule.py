"""Learning rate over steps: linear warmup, then cosine/linear/constant decay to min_lr."""

import math

from torch.optim.lr_scheduler import LambdaLR

from sa_megatron.config import Config


def learning_rate(step: int, config: Config) -> float:
    """The lr used by optimizer step `step` (0-based)."""
    opt, sched = config.optimizer, config.schedule
    warmup = sched.warmup_iters
    if step < warmup:
        return opt.lr * (step + 1) / warmup
    if sched.decay_style == "constant":
        return opt.lr
    decay_iters = sched.decay_iters if sched.decay_iters is not None else config.training.train_iters
    if decay_iters <= warmup:
        return opt.min_lr
    progress = min((step - warmup) / (decay_iters - warmup), 1.0)
    if sched.decay_style == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return opt.min_lr + (opt.lr - opt.min_lr) * shape


def lr_scheduler_factory(config: Config):
    """A callable DeepSpeed applies to the optimizer it wraps (ZeRO replaces the parameter groups)."""

    def factor(step: int) -> float:
        return learning_rate(step, config) / config.optimizer.lr if config.optimizer.lr else 0.0

    return lambda optimizer: LambdaLR(optimizer, factor)
