"""The DeepSpeed engine of a run: the model at its layout, the config dict (built in one place from ours), and
the step driver for it (`steps.py`).

pipeline_parallel = 1: a `GPTModel` in DeepSpeed's plain engine, with the topology's grid as its `mpu` (data-parallel
gradient reduction, and a gradient norm that counts each tensor shard once). pipeline_parallel > 1: a
`PipelineModule` of the same layer specs, partitioned by transformer blocks, in DeepSpeed's PipelineEngine (1F1B,
ZeRO 0-1).
"""

import logging
import warnings

from sa_megatron.config import Config
from sa_megatron.parallel import rng_tracker, topology
from sa_megatron.training.nonfinite import StepGate, needs_gate
from sa_megatron.training.optimizer import build_optimizer
from sa_megatron.training.schedule import lr_scheduler_factory
from sa_megatron.training.steps import DataParallelSteps, PipelineSteps

# DeepSpeed's own step printing is off: our MetricsLogger prints the training log.
_NEVER = 2**62


def gradient_accumulation_steps(config: Config, data_parallel: int) -> int:
    t = config.training
    return t.global_batch_size // (t.micro_batch_size * data_parallel)


def deepspeed_config(config: Config, data_parallel: int, load_universal: bool = False) -> dict:
    t = config.training
    ds = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps(config, data_parallel),
        # Where the StepGate runs (fp32 at ZeRO-0) it clips by the true global norm it computes anyway: DeepSpeed's
        # stage-0 clipping counts only stage 0's replicated parameters in a pipeline, and fails on a vetoed step.
        "gradient_clipping": 0.0 if needs_gate(config) else config.optimizer.clip_grad,
        "zero_optimization": {"stage": config.parallel.zero_stage},
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
    }
    if load_universal:
        ds["checkpoint"] = {"load_universal": True}
    if config.parallel.pipeline_parallel > 1:
        # DeepSpeed can send 1/tp of an activation per tensor rank between stages, which is valid only when the
        # tensor ranks hold the same activation: not so on sequence shards.
        partitioned = not config.parallel.sequence_parallel
        ds["pipeline"] = {"pipe_partitioned": partitioned, "grad_partitioned": partitioned}
    if t.precision == "bf16":
        ds["bf16"] = {"enabled": True}
        # Accumulate and reduce gradients in fp32 (DeepSpeed's default for bf16 is bf16).
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    elif t.precision == "fp16":
        # loss_scale 0 selects DeepSpeed's dynamic loss scaler.
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": t.initial_loss_scale_power}
    return ds


def build_layout_model(config: Config, padded_vocab_size: int):
    """This rank's part of the model: the whole GPTModel, or its pipeline stage's layers only."""
    from sa_megatron.model import build_model, gpt_layers, language_model_loss
    from sa_megatron.model.gpt import seed_layer

    seed, checkpointing = config.training.seed, config.training.activation_checkpointing
    if config.parallel.pipeline_parallel == 1:
        model = build_model(config.model, padded_vocab_size, seed)
        model.activation_checkpointing = checkpointing
        return model
    from deepspeed.pipe import PipelineModule

    return PipelineModule(
        layers=gpt_layers(config.model, padded_vocab_size), topology=topology.grid().topology(),
        loss_fn=language_model_loss, seed_layers=True, seed_fn=seed_layer, base_seed=seed,
        partition_method="type:TransformerBlock",
        activation_checkpoint_interval=1 if checkpointing else 0,
        activation_checkpoint_func=rng_tracker.checkpoint, checkpointable_layers=["TransformerBlock"],
    )


def build_engine(config: Config, padded_vocab_size: int, data_parallel: int, load_universal: bool = False):
    """The DeepSpeed engine with AdamW and our lr schedule, and the steps that drive it: (engine, steps).
    `load_universal`: it will resume from a universal checkpoint (one written at another layout)."""
    import deepspeed

    deepspeed.utils.logger.setLevel(logging.WARNING)
    # DeepSpeed's ZeRO still calls torch.distributed collectives that torch has renamed, once per step.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed.c10d_logger")
    # DeepSpeed's pipeline engine leaves a c10d broadcast in the autograd graph, which torch warns about on every
    # backward; the layout tests check the resulting gradients against the one-process run.
    warnings.filterwarnings("ignore", message="c10d::broadcast_: an autograd kernel was not registered")
    model = build_layout_model(config, padded_vocab_size)
    pipelined = config.parallel.pipeline_parallel > 1
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=build_optimizer(model, config),
        lr_scheduler=lr_scheduler_factory(config),
        config=deepspeed_config(config, data_parallel, load_universal),
        mpu=None if pipelined else topology.grid(),  # a PipelineModule brings its own grid
    )
    if data_parallel == 1 and config.parallel.zero_stage == 0:
        # Nothing to average over one data-parallel rank, yet DeepSpeed's ZeRO-0 path flattens, "all-reduces" and
        # copies back every gradient each step (44 of 980 ms a step for a 20M model on 2 CPU cores).
        engine.enable_backward_allreduce = False
    gate = StepGate(engine, config.optimizer.clip_grad) if needs_gate(config) else None
    if pipelined:
        steps = PipelineSteps(engine, config.model.num_layers, gate)
    else:
        steps = DataParallelSteps(engine, config.model.num_layers, gate)
    return engine, steps
