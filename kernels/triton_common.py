"""Pieces shared by the Triton SA-Softmax forward and backward kernels.

- variant / bias codes (compile-time constants),
- scores in log2 units: ``z = x · log2(e)``, with log2(e) folded into the scale and the bias parameters, so every
  exponential is one ``exp2`` (MUFU ``ex2``) and Kerple's log is one ``log2`` (MUFU ``lg2`` through
  ``libdevice.fast_log2f`` on a GPU, ``tl.log2`` under the interpreter, which has no libdevice; chosen at trace
  time by the ``FAST_LOG`` constexpr),
- launch limits: ``launch_grid`` folds (batch, heads) onto grid axes 1 and 2 (each at most 65,535), and
  ``check_row_strides`` guards the int32 part of the tile offsets (the per-tile base is int64, ``tile_offset``),
- ``score_tile`` and the visibility mask of one (query block × key block) tile.

Block sizes live in ``kernels/tuned_configs.py``.
"""
import os

import triton
import triton.language as tl

try:  # triton >= 3.0 (3.6 on the GPU image, 3.9 here): one dispatching module ...
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - older layouts
    try:
        from triton.language.extra.cuda import libdevice
    except ImportError:
        libdevice = None

# Variant codes (``VARIANT`` constexpr of every kernel); kernels treat any other code as "sa_raw".
SOFTMAX = tl.constexpr(0)
SA = tl.constexpr(1)
VARIANT_CODES = {"softmax": 0, "sa": 1, "sa_raw": 2}

# Bias codes (``BIAS`` constexpr).
NO_BIAS = tl.constexpr(0)
ALIBI = tl.constexpr(1)
KERPLE = tl.constexpr(2)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)

# MUFU lg2 on a GPU (tl.log lowers to a ~30-instruction software logf there); the interpreter lacks libdevice.
FAST_LOG = tl.constexpr(not INTERPRET and libdevice is not None and hasattr(libdevice, "fast_log2f"))

GRID_AXIS_MAX = 65_535  # CUDA's limit on grid dimensions y and z
INT32_MAX = 2**31 - 1


@triton.jit
def log2_f32(x):
    """log2 of an fp32 tensor: one MUFU ``lg2.approx`` on a GPU, ``tl.log2`` under the interpreter."""
    if FAST_LOG:
        return libdevice.fast_log2f(x)
    else:
        return tl.log2(x)


def launch_grid(blocks, batch, heads):
    """Grid ``(blocks, heads, batch)``: batch·heads folded onto two axes, each within CUDA's 65,535.

    Kernels read ``head = program_id(1)``, ``batch = program_id(2)``. ValueError names what is too large.
    """
    if heads > GRID_AXIS_MAX or batch > GRID_AXIS_MAX:
        raise ValueError(f"triton attention launches (blocks, heads, batch) grids; heads ({heads}) and batch "
                         f"({batch}) must each be at most {GRID_AXIS_MAX}: split the batch")
    if blocks > INT32_MAX:
        raise ValueError(f"triton attention: {blocks} sequence blocks exceed the grid's x limit {INT32_MAX}")
    return blocks, heads, batch


def check_row_strides(block, *row_strides):
    """Tile offsets are int64 per tile (``tile_offset``) plus an int32 ``arange(block) · stride`` inside it."""
    for stride in row_strides:
        if block * stride > INT32_MAX:
            raise ValueError(f"triton attention: sequence stride {stride} times block {block} overflows int32 "
                             "offsets inside a tile; make the tensor contiguous")


@triton.jit
def tile_offset(start, stride):
    """int64 offset of row ``start``: ``start · stride`` passes 2³¹ once N·3·H·D does (fused-QKV strides)."""
    return tl.cast(start, tl.int64) * stride


@triton.jit
def load_bias_params(BiasParams, H, head):
    """This head's (ALiBi slope, Kerple p, Kerple a) from the (3, H) fp32 table the wrapper fills."""
    return tl.load(BiasParams + head), tl.load(BiasParams + H + head), tl.load(BiasParams + 2 * H + head)


@triton.jit
def position_bias2(q_pos, k_pos, slope, kerple_p, kerple_a, BIAS: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Bias tile in log2 units (``bias · log2 e``), distance d = |i − j| (kernels/bias.py).

    ALiBi ``−slope·log2e·d``; Kerple-log ``−p·ln(1 + a·d)·log2e = −p·log2(1 + a·d)``. Shape (M, N), or (N, M)
    when ``TRANSPOSED`` (key rows, query columns).
    """
    if TRANSPOSED:
        distance = tl.abs(q_pos[None, :] - k_pos[:, None]).to(tl.float32)
    else:
        distance = tl.abs(q_pos[:, None] - k_pos[None, :]).to(tl.float32)
    if BIAS == ALIBI:
        bias = (-slope * LOG2E) * distance
    else:
        bias = -kerple_p * log2_f32(1.0 + kerple_a * distance)
    return bias


@triton.jit
def score_tile(a, b, q_pos, k_pos, qk_scale, slope, kerple_p, kerple_a,
               BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, TRANSPOSED: tl.constexpr):
    """``z = (scale·q·kᵀ + bias)·log2e`` in fp32: ``a @ b`` is q·kᵀ (M, N), or k·qᵀ (N, M) when ``TRANSPOSED``.

    ``qk_scale`` is scale·log2e. Masking is the caller's job.
    """
    z = tl.dot(a, b, input_precision=DOT_PRECISION) * qk_scale
    if BIAS != NO_BIAS:
        z += position_bias2(q_pos, k_pos, slope, kerple_p, kerple_a, BIAS, TRANSPOSED)
    return z


@triton.jit
def causal_key_end(block_start, N_Q, N_K, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """One past the last key the query block at ``block_start`` can see (later key tiles lie above the diagonal)."""
    if CAUSAL:
        return tl.minimum(block_start + BLOCK_M + N_K - N_Q, N_K)
    return N_K


@triton.jit
def full_key_end(block_start, N_Q, N_K, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, EVEN_N: tl.constexpr):
    """End of the key tiles that every row of the query block at ``block_start`` sees whole: no mask needed.

    Causal: keys ``j <= block_start + N_K − N_Q`` are visible to all its rows. Beyond that: diagonal/boundary tiles.
    """
    if CAUSAL:
        return tl.minimum(block_start + N_K - N_Q + 1, N_K) // BLOCK_N * BLOCK_N
    if EVEN_N:
        return N_K
    return N_K // BLOCK_N * BLOCK_N


@triton.jit
def key_visible(q_pos, k_pos, n_k, CAUSAL: tl.constexpr, EVEN_N: tl.constexpr):
    """Mask broadcastable to (M, N): key exists (``j < n_k``) and, when causal, ``j <= i`` (absolute positions)."""
    if EVEN_N:
        visible = k_pos[None, :] >= 0
    else:
        visible = k_pos[None, :] < n_k
    if CAUSAL:
        visible = visible & (k_pos[None, :] <= q_pos[:, None])
    return visible
