"""Block-size configs of the Triton attention kernels: fixed by default, tuned only on purpose.

- ``TABLE`` (read from ``tuned_configs.json`` next to this file) holds one config per
  (kernel, variant, head-dim bucket, dtype, causal). Launches use it by default, so every process and every
  data-parallel rank runs the same tiles (bitwise-reproducible runs), and a new sequence length, e.g. each token of
  ``generate``, never triggers tuning.
- ``python -m benchmarks.tune_attention`` regenerates the table on a GPU by timing ``candidates(...)``.
- ``SA_ATTENTION_AUTOTUNE=1`` (GPU only) lets ``triton.autotune`` pick per process instead, keyed on a length bucket
  (next power of two, capped), never on the exact length.
- Under ``TRITON_INTERPRET=1`` every kernel runs ``INTERPRET_CONFIG`` (the interpreter cannot time anything, and small
  tiles keep CPU tests fast).

Candidate lists depend on the dtype (fp32 tiles are small: fp32 operands take twice the shared memory and IEEE
dots are slow to compile) and are pruned per variant of the configs that an ahead-of-time sm_90a compile showed to
spill or to sit at the shared-memory edge for SA (which keeps a second accumulator): forward 128×64 with 4 warps and
128×128, dK/dV 32×128, dQ 128×32. The SA forward gets 64×64 with 4 warps (two CTAs per SM).

``LAST_LAUNCH[kernel]`` records the config (and the compiled kernel, for registers / spills) of each kernel's latest
launch; tests check it to show they never autotune.
"""
import json
import os
import pathlib
from typing import NamedTuple

import torch
import triton

from kernels.triton_common import INTERPRET

KERNELS = ("forward", "dkdv", "dq")
VARIANTS = ("softmax", "sa", "sa_raw")
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
HEAD_DIM_BUCKETS = (16, 32, 64, 128, 256)  # BLOCK_D: head_dim padded to a power of two, at least 16
TABLE_PATH = pathlib.Path(__file__).with_name("tuned_configs.json")
AUTOTUNE_ENV = "SA_ATTENTION_AUTOTUNE"
LENGTH_BUCKET_CAP = 65_536


class Config(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


INTERPRET_CONFIG = Config(32, 16, 4, 1)  # BLOCK_M != BLOCK_N on purpose: exercises the loop bounds of unequal tiles

# 16-bit inputs. (BLOCK_M, BLOCK_N, warps, stages); BLOCK_M = query rows, BLOCK_N = key rows, in every kernel.
_CANDIDATES_16 = {
    "forward": [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4), (128, 32, 4, 4)],
    "dkdv": [(64, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 3), (32, 64, 4, 3), (16, 64, 4, 4)],
    "dq": [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 3), (64, 16, 4, 4)],
}
_CANDIDATES_FP32 = {
    "forward": [(64, 32, 4, 2), (32, 32, 4, 2), (64, 16, 4, 2), (32, 16, 4, 1)],
    "dkdv": [(32, 64, 4, 2), (32, 32, 4, 2), (16, 32, 4, 1)],
    "dq": [(64, 32, 4, 2), (32, 32, 4, 2), (32, 16, 4, 1)],
}
# Spill or sit at the shared-memory edge for the SA variants (sm_90a AOT compile, see the module docstring).
_PRUNED_SA = {"forward": {(128, 64, 4), (128, 128, 8)}, "dkdv": {(32, 128, 4)}, "dq": {(128, 32, 4)}}
# Shared-memory budget rule for the largest head dims: keep both tile edges at most this.
_MAX_TILE_D256 = {"fp16": 64, "bf16": 64, "fp32": 32}


def length_bucket(n):
    """Autotune key for a length: the next power of two, capped (a few buckets instead of one per length)."""
    return min(triton.next_power_of_2(max(int(n), 1)), LENGTH_BUCKET_CAP)


def dtype_name(dtype):
    return DTYPE_NAMES[dtype]


def candidates(kernel, variant, dtype, block_d):
    """Configs worth timing for one (kernel, variant, dtype, head-dim bucket), largest tiles first."""
    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    listed = (_CANDIDATES_FP32 if name == "fp32" else _CANDIDATES_16)[kernel]
    configs = []
    for m, n, warps, stages in listed:
        if variant != "softmax" and (m, n, warps) in _PRUNED_SA[kernel]:
            continue
        if block_d >= 256 and max(m, n) > _MAX_TILE_D256[name]:
            continue
        if block_d >= 256:
            stages = min(stages, 2)
        configs.append(Config(m, n, warps, stages))
    return configs or [Config(16, 16, 4, 1)]


def default_config(kernel, variant, dtype, block_d, causal):
    """The untuned choice: by reasoning about registers and shared memory, before any GPU measurement."""
    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    options = candidates(kernel, variant, name, block_d)
    if name != "fp32" and block_d <= 128:
        preferred = {
            ("forward", "softmax"): (128, 64, 8 if block_d == 128 else 4),
            ("forward", "sa"): (64, 64, 4), ("forward", "sa_raw"): (64, 64, 4),
            ("dkdv", "softmax"): (64, 128, 8), ("dkdv", "sa"): (64, 64, 4), ("dkdv", "sa_raw"): (64, 64, 4),
            ("dq", "softmax"): (128, 64, 8), ("dq", "sa"): (64, 64, 4), ("dq", "sa_raw"): (64, 64, 4),
        }[(kernel, variant)]
        for config in options:
            if config[:3] == preferred:
                return config
    return options[0]


def table_key(kernel, variant, block_d, dtype, causal):
    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    return f"{kernel}/{variant}/{block_d}/{name}/{'causal' if causal else 'full'}"


def default_table():
    """Every key of the table with its ``default_config``."""
    return {table_key(kernel, variant, block_d, name, causal): list(default_config(kernel, variant, name, block_d,
                                                                                   causal))
            for kernel in KERNELS for variant in VARIANTS for block_d in HEAD_DIM_BUCKETS
            for name in ("fp16", "bf16", "fp32") for causal in (False, True)}


def load_table(path=TABLE_PATH):
    """{key: Config} from the shipped JSON; keys it lacks fall back to ``default_config`` in ``select_config``."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {key: Config(*value) for key, value in data["configs"].items()}


TABLE = load_table()
LAST_LAUNCH = {}
# Set by benchmarks/tune_attention.py while it times candidates: {table key: Config}.
OVERRIDES = {}


def autotune_requested():
    return os.environ.get(AUTOTUNE_ENV, "0") == "1" and not INTERPRET


def select_config(kernel, variant, dtype, block_d, causal):
    """The config a launch uses when not autotuning."""
    if INTERPRET:
        return INTERPRET_CONFIG
    key = table_key(kernel, variant, block_d, dtype, causal)
    if key in OVERRIDES:
        return OVERRIDES[key]
    return TABLE.get(key) or default_config(kernel, variant, dtype, block_d, causal)


_AUTOTUNERS = {}


def _autotuner(kernel_name, kernel, variant, dtype, block_d):
    """``triton.autotune`` over the candidates, keyed on length buckets, built once per candidate list."""
    key = (kernel_name, variant, dtype, block_d)
    if key not in _AUTOTUNERS:
        configs = [triton.Config({"BLOCK_M": c.block_m, "BLOCK_N": c.block_n}, num_warps=c.num_warps,
                                 num_stages=c.num_stages) for c in candidates(kernel_name, variant, dtype, block_d)]
        even = triton.heuristics({"EVEN_N": lambda args: args["N_K"] % args["BLOCK_N"] == 0})(kernel)
        _AUTOTUNERS[key] = triton.autotune(
            configs, key=["N_Q_BUCKET", "N_K_BUCKET", "HEAD_DIM", "VARIANT", "CAUSAL", "BIAS", "DOT_PRECISION"])(even)
    return _AUTOTUNERS[key]


def launch(kernel_name, kernel, grid, args, *, variant, dtype, block_d, causal, n_q, n_k, **constexprs):
    """Launch ``kernel`` with its table config (or autotuned, when requested); record what ran in LAST_LAUNCH.

    ``grid(block_m, block_n)`` gives the launch grid for a tile shape.
    """
    buckets = dict(N_Q_BUCKET=length_bucket(n_q), N_K_BUCKET=length_bucket(n_k))
    if autotune_requested():
        tuner = _autotuner(kernel_name, kernel, variant, dtype, block_d)
        compiled = tuner[lambda meta: grid(meta["BLOCK_M"], meta["BLOCK_N"])](*args, **buckets, **constexprs)
        best = tuner.best_config
        config = Config(best.kwargs["BLOCK_M"], best.kwargs["BLOCK_N"], best.num_warps, best.num_stages)
        LAST_LAUNCH[kernel_name] = dict(config=config, compiled=compiled, autotuned=True)
        return
    config = select_config(kernel_name, variant, dtype, block_d, causal)
    compiled = kernel[grid(config.block_m, config.block_n)](
        *args, **buckets, **constexprs, EVEN_N=n_k % config.block_n == 0, BLOCK_M=config.block_m,
        BLOCK_N=config.block_n, num_warps=config.num_warps, num_stages=config.num_stages)
    LAST_LAUNCH[kernel_name] = dict(config=config, compiled=compiled, autotuned=False)
