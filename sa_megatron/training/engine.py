"""The DeepSpeed engine for a run: its config dict (built in one place from ours) and its construction."""

import logging
import warnings

from torch import nn

from sa_megatron.config import Config
from sa_megatron.training.optimizer import build_optimizer
from sa_megatron.training.schedule import lr_scheduler_factory

# DeepSpeed's own step printing is off: our MetricsLogger prints the training log.
_NEVER = 2**62


def gradient_accumulation_steps(config: Config, data_parallel: int) -> int:
    t = config.training
    return t.global_batch_size // (t.micro_batch_size * data_parallel)


def deepspeed_config(config: Config, data_parallel: int) -> dict:
    t = config.training
    ds = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps(config, data_parallel),
        "gradient_clipping": config.optimizer.clip_grad,
        "zero_optimization": {"stage": config.parallel.zero_stage},
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
    }
    if t.precision == "bf16":
        ds["bf16"] = {"enabled": True}
        # Accumulate and reduce gradients in fp32 (DeepSpeed's default for bf16 is bf16).
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    elif t.precision == "fp16":
        # loss_scale 0 selects DeepSpeed's dynamic loss scaler.
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": t.initial_loss_scale_power}
    return ds


def build_engine(model: nn.Module, config: Config, data_parallel: int):
    """Wrap `model` in a DeepSpeed engine with AdamW and our lr schedule; returns the engine."""
    import deepspeed

    deepspeed.utils.logger.setLevel(logging.WARNING)
    # DeepSpeed's ZeRO still calls torch.distributed collectives that torch has renamed, once per step.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed.c10d_logger")
    model.activation_checkpointing = config.training.activation_checkpointing
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=build_optimizer(model, config),
        lr_scheduler=lr_scheduler_factory(config),
        config=deepspeed_config(config, data_parallel),
    )
    return engine
