"""Pieces shared by the Triton SA-Softmax forward and backward kernels.

- variant / bias codes (compile-time constants),
- block-size configs: autotuned on a GPU, one small fixed config under ``TRITON_INTERPRET=1``
  (the interpreter cannot benchmark, and small tiles keep CPU tests fast),
- ``load_bias_params``: one head's row of the (3, H) bias-parameter table,
- ``position_bias``: ALiBi / Kerple-log from the distance ``|i - j|`` (convention of ``kernels/bias.py``),
- ``score_tile``: the scaled, biased scores of one (query block × key block) tile.
"""
import os

import triton
import triton.language as tl

# Variant codes (``VARIANT`` constexpr of every kernel); kernels treat any other code as "sa_raw".
SOFTMAX = tl.constexpr(0)
SA = tl.constexpr(1)
VARIANT_CODES = {"softmax": 0, "sa": 1, "sa_raw": 2}

# Bias codes (``BIAS`` constexpr).
NO_BIAS = tl.constexpr(0)
ALIBI = tl.constexpr(1)
KERPLE = tl.constexpr(2)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Block sizes used under the interpreter. BLOCK_M != BLOCK_N on purpose: it exercises the causal loop bounds
# for unequal tiles, as the GPU configs have.
INTERPRET_BLOCK_M = 32
INTERPRET_BLOCK_N = 16


def autotune(gpu_configs, key):
    """``triton.autotune`` over ``gpu_configs`` on a GPU; a single small config under the interpreter."""
    if INTERPRET:
        configs = [triton.Config({"BLOCK_M": INTERPRET_BLOCK_M, "BLOCK_N": INTERPRET_BLOCK_N})]
    else:
        configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
                   for m, n, w, s in gpu_configs]
    return triton.autotune(configs=configs, key=key)


@triton.jit
def load_bias_params(BiasParams, H, head):
    """This head's (ALiBi slope, Kerple p, Kerple a) from the (3, H) fp32 table the wrapper fills."""
    return tl.load(BiasParams + head), tl.load(BiasParams + H + head), tl.load(BiasParams + 2 * H + head)


@triton.jit
def position_bias(q_pos, k_pos, slope, kerple_p, kerple_a, BIAS: tl.constexpr):
    """Bias tile for absolute query positions ``q_pos`` (M,) and key positions ``k_pos`` (N,).

    d = |i - j| always (kernels/bias.py): ALiBi ``-slope * d``, Kerple-log ``-p * log(1 + a * d)``.
    """
    distance = tl.abs(q_pos[:, None] - k_pos[None, :]).to(tl.float32)
    if BIAS == ALIBI:
        bias = -slope * distance
    else:
        bias = -kerple_p * tl.log(1.0 + kerple_a * distance)
    return bias


@triton.jit
def score_tile(q, k_t, q_pos, k_pos, scale, slope, kerple_p, kerple_a,
               BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``x = scale * q·kᵀ + bias`` in fp32 for q (M, D) and kᵀ (D, N). Masking is the caller's job."""
    x = tl.dot(q, k_t, input_precision=DOT_PRECISION) * scale
    if BIAS != NO_BIAS:
        x += position_bias(q_pos, k_pos, slope, kerple_p, kerple_a, BIAS)
    return x


@triton.jit
def causal_key_end(pid_m, N_Q, N_K, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """One past the last key the query block ``pid_m`` can see: later key tiles lie above the causal diagonal."""
    if CAUSAL:
        return tl.minimum((pid_m + 1) * BLOCK_M + N_K - N_Q, N_K)
    return N_K


@triton.jit
def key_visible(q_pos, k_pos, n_k, CAUSAL: tl.constexpr):
    """Mask broadcastable to (M, N): key exists (``j < n_k``) and, when causal, ``j <= i`` (absolute positions)."""
    visible = k_pos[None, :] < n_k
    if CAUSAL:
        visible = visible & (k_pos[None, :] <= q_pos[:, None])
    return visible
