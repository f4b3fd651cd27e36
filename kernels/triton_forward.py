"""Triton forward pass of SA-Softmax attention (FlashAttention-2 layout; DESIGN §6 "Kernel math").

One program per (query block, batch·head). It walks the key tiles once, keeping per query row, in fp32:

    m    running max of x over visible keys            (softmax max, and b = max(m, 0) for "sa")
    mn   running min of x over visible keys            ("sa": a = min(mn, 0))
    l    Σ e^{x−m}
    A0   Σ e^{x−m} v
    A1'  Σ (x−m) e^{x−m} v                            ("sa", "sa_raw")
    argmax / argmin: first key index attaining m / mn  ("sa": where the gradient of b / a goes)

and rescales by α = e^{m_old − m_new} when the max grows: l ← α l, A0 ← α A0, A1' ← α (A1' + (m_old − m_new) A0).
Epilogue:  softmax  O = A0 / l
           sa       O = (A1' + (m − a) A0) / (δ l),  δ = b − a + eps;  also O_std = A0 / l
           sa_raw   O = (A1' + m A0) / l            (= A1 / l)
and, when a backward will follow, LSE = m + log l for every variant. O_std and, for fp16/bf16 inputs, an fp32
copy of O are saved in fp32 for the backward's row sums D = rowsum(dO ∘ O) and S0 = rowsum(dO ∘ O_std).
"""
import triton
import triton.language as tl

from kernels.triton_common import (SA, SOFTMAX, autotune, causal_key_end, key_visible, load_bias_params,
                                   score_tile)

# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried on a GPU. The last, small one keeps head_dim 256 in fp32
# within shared memory when every larger tile is out of resources (the autotuner skips those).
FORWARD_CONFIGS = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4),
                   (128, 32, 4, 4), (32, 32, 4, 1)]

# Index larger than any key position: neutral element of the "first index attaining the extreme" min-reduction.
NO_INDEX = tl.constexpr(2**31 - 1)


@autotune(FORWARD_CONFIGS, key=["N_Q", "N_K", "HEAD_DIM", "VARIANT", "CAUSAL", "BIAS"])
@triton.jit
def sa_forward_kernel(
    Q, K, V,                           # (B, H, N, D) inputs
    Out, OutF32, OutStd,               # (B, H, N_Q, D), one layout (stride_o*): O in q's dtype; fp32 O, O_std
    Lse, RowA, RowDelta, ArgMin, ArgMax,  # (B·H, N_Q) row statistics
    BiasParams,                        # (3, H) fp32: ALiBi slope, Kerple p, Kerple a
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    H, KV_GROUP, N_Q, N_K, HEAD_DIM, scale, eps,
    VARIANT: tl.constexpr, CAUSAL: tl.constexpr, BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SAVE_FOR_BACKWARD: tl.constexpr, SAVE_FP32_OUT: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    batch = (bh // H).to(tl.int64)
    head = bh % H
    kv_head = (head // KV_GROUP).to(tl.int64)  # grouped-query attention: KV_GROUP query heads share one K/V head

    q_base = Q + batch * stride_qb + head.to(tl.int64) * stride_qh
    k_base = K + batch * stride_kb + kv_head * stride_kh
    v_base = V + batch * stride_vb + kv_head * stride_vh

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM  # head dim padded to a power of two
    row_ok = offs_m < N_Q
    # Queries are aligned to the end of the keys: query i sits at position i + N_K − N_Q (kernels/bias.py).
    q_pos = offs_m + (N_K - N_Q)

    q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                other=0.0)
    slope, kerple_p, kerple_a = load_bias_params(BiasParams, H, head)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    min_i = tl.full([BLOCK_M], float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc0 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc1 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    argmax_i = tl.zeros([BLOCK_M], tl.int32)
    argmin_i = tl.zeros([BLOCK_M], tl.int32)

    # Causal: key tiles entirely above the diagonal of this query block are skipped.
    hi = causal_key_end(pid_m, N_Q, N_K, BLOCK_M, CAUSAL)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N_K
        k_t = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None], mask=n_ok[None, :] & d_ok[:, None],
                      other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :],
                    other=0.0)

        x = score_tile(q, k_t, q_pos, offs_n, scale, slope, kerple_p, kerple_a, BIAS, DOT_PRECISION)
        visible = key_visible(q_pos, offs_n, N_K, CAUSAL)
        x = tl.where(visible, x, float("-inf"))

        tile_max = tl.max(x, 1)
        m_new = tl.maximum(m_i, tile_max)  # finite: every row sees key 0 in its first tile
        if VARIANT == SA:
            x_for_min = tl.where(visible, x, float("inf"))
            tile_min = tl.min(x_for_min, 1)
            if SAVE_FOR_BACKWARD:
                # First index attaining the extreme: smallest column within the tile, and a later tile only takes
                # over on a strictly better value (tiles run in increasing key order).
                tile_argmax = tl.min(tl.where(x == tile_max[:, None], offs_n[None, :], NO_INDEX), 1)
                argmax_i = tl.where(tile_max > m_i, tile_argmax, argmax_i)
                tile_argmin = tl.min(tl.where(x_for_min == tile_min[:, None], offs_n[None, :], NO_INDEX), 1)
                argmin_i = tl.where(tile_min < min_i, tile_argmin, argmin_i)
            min_i = tl.minimum(min_i, tile_min)

        alpha = tl.exp(m_i - m_new)  # 0 on the first tile (m_i = −inf)
        p = tl.exp(x - m_new[:, None])  # e^{x−m}; 0 at masked entries
        l_i = l_i * alpha + tl.sum(p, 1)
        if VARIANT != SOFTMAX:
            # A1' ← α (A1' + (m_old − m_new) A0_old) + Σ (x − m_new) e^{x−m_new} v.
            # (x − m) is zeroed at masked entries (−inf · 0 would be NaN); m_old − m_new is 0 on the first tile.
            shift = tl.where(m_i == float("-inf"), 0.0, m_i - m_new)
            acc1 = alpha[:, None] * (acc1 + shift[:, None] * acc0)
            x_centered = tl.where(visible, x - m_new[:, None], 0.0)
            acc1 = tl.dot((x_centered * p).to(v.dtype), v, acc1, input_precision=DOT_PRECISION)
        acc0 = acc0 * alpha[:, None]
        acc0 = tl.dot(p.to(v.dtype), v, acc0, input_precision=DOT_PRECISION)
        m_i = m_new

    # Epilogue.
    if VARIANT == SOFTMAX:
        out = acc0 / l_i[:, None]
    elif VARIANT == SA:
        a = tl.minimum(min_i, 0.0)
        b = tl.maximum(m_i, 0.0)
        delta = b - a + eps
        # O = (A1' + (m − a) A0) / (δ l). A first causal row with x_00 < 0 has m = a = x_00 and A1' = 0: O = 0.
        out = (acc1 + (m_i - a)[:, None] * acc0) / (delta * l_i)[:, None]
    else:  # sa_raw: O = A1 / l
        out = (acc1 + m_i[:, None] * acc0) / l_i[:, None]
    o_off = batch * stride_ob + head.to(tl.int64) * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :]
    o_mask = row_ok[:, None] & d_ok[None, :]
    tl.store(Out + o_off, out.to(Out.dtype.element_ty), mask=o_mask)

    if SAVE_FOR_BACKWARD:
        stats_off = bh.to(tl.int64) * N_Q + offs_m
        tl.store(Lse + stats_off, m_i + tl.log(l_i), mask=row_ok)
        if SAVE_FP32_OUT:
            # The backward's D = rowsum(dO ∘ O) from an fp16/bf16-rounded O loses digits that the Kerple parameter
            # gradients (sums over all N² entries) notice; keep O in fp32 for it.
            tl.store(OutF32 + o_off, out, mask=o_mask)
        if VARIANT == SA:
            tl.store(OutStd + o_off, acc0 / l_i[:, None], mask=o_mask)
            tl.store(RowA + stats_off, a, mask=row_ok)
            tl.store(RowDelta + stats_off, delta, mask=row_ok)
            # −1 where the bound is clamped to 0 (x_min >= 0 / x_max <= 0): no gradient flows through a / b there.
            tl.store(ArgMin + stats_off, tl.where(min_i < 0.0, argmin_i, -1), mask=row_ok)
            tl.store(ArgMax + stats_off, tl.where(m_i > 0.0, argmax_i, -1), mask=row_ok)
