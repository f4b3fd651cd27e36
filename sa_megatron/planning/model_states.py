"""Weights, gradients and optimizer states per device, by precision and ZeRO stage.

Bytes per parameter follow what DeepSpeed allocates for our engine config (sa_megatron/training/engine.py):
AdamW's two moments in fp32 always; bf16 / fp16 keep 16-bit weights plus an fp32 master copy in the optimizer.
ZeRO stage 1 partitions the optimizer states over the data-parallel ranks, stage 2 also the gradients, stage 3
also the weights (which it gathers one module at a time). tests/test_plan.py checks the totals against DeepSpeed's
own estimators.
"""
from dataclasses import dataclass

# Gradient bytes per parameter as (kept whole on every rank, partitioned over data parallel), by precision and stage.
GRADIENT_BYTES = {
    "fp32": {0: (4, 0), 1: (4, 0), 2: (0, 4), 3: (0, 4)},
    # bf16 accumulates in fp32 (data_types.grad_accum_dtype); at stage 0-1 DeepSpeed's BF16_Optimizer holds a whole
    # fp32 gradient buffer; stage 2 keeps 16-bit gradients and the fp32 partition; stage 3 only the fp32 partition.
    "bf16": {0: (4, 0), 1: (4, 0), 2: (0, 6), 3: (0, 4)},
    # fp16: 16-bit gradients plus fp32 master gradients (whole without ZeRO, partitioned from stage 1).
    "fp16": {0: (6, 0), 1: (2, 4), 2: (0, 6), 3: (0, 4)},
}


@dataclass(frozen=True)
class ModelStateBytes:
    weights: int
    gradients: int
    optimizer: int


def model_state_bytes(parameters: int, precision: str, zero_stage: int, data_parallel: int,
                      largest_module: int = 0) -> ModelStateBytes:
    """Bytes on one device holding `parameters` (its tensor/pipeline share) replicated over `data_parallel` ranks.

    `largest_module`: parameters of the biggest module on this device; ZeRO-3 gathers one module's full weights
    and gradients at a time, so that working set is added to the weights (DeepSpeed's estimator counts it the same).
    """
    weight_bytes = 4 if precision == "fp32" else 2
    optimizer_bytes = 8 if precision == "fp32" else 12  # m, v (+ the fp32 master weights under mixed precision)
    whole, partitioned = GRADIENT_BYTES[precision][zero_stage]
    if zero_stage >= 3:
        weights = weight_bytes * parameters / data_parallel + 2 * weight_bytes * largest_module
    else:
        weights = weight_bytes * parameters
    gradients = whole * parameters + partitioned * parameters / data_parallel
    optimizer = optimizer_bytes * parameters / (data_parallel if zero_stage >= 1 else 1)
    return ModelStateBytes(round(weights), round(gradients), round(optimizer))


def gradient_reduce_bytes(precision: str) -> int:
    """Bytes per parameter of the gradients that data parallelism reduces: fp32 for fp32 and for bf16 (accumulated
    in fp32), 16-bit for fp16 (DeepSpeed's default communication type)."""
    return 2 if precision == "fp16" else 4
