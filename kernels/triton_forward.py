"""Triton forward pass of SA-Softmax attention (FlashAttention-2 layout; DESIGN §6 "Kernel math").

One program per (query block, head, batch); causal launches run the longest rows (the last query blocks) first.
Scores are kept in log2 units, ``z = x·log2 e`` (kernels/triton_common.py), so ``e^{x−m} = 2^{z−m₂}``. Per query
row, in fp32:

    m₂   reference max: exponentials are taken against it      (lazy: see below)
    mx   true running max of z over visible keys               ("sa": b = max(mx, 0), argmax)
    mn   running min of z over visible keys                    ("sa": a = min(mn, 0), argmin)
    l    Σ 2^{z−m₂}
    A0   Σ 2^{z−m₂} v
    A1'' Σ (z−m₂) 2^{z−m₂} v                                    ("sa", "sa_raw")

Lazy rescale (exact): ``m₂`` moves only when some row's max exceeds it by more than ``RESCALE_THRESHOLD`` (log2
units, so 2^{z−m₂} <= 2^3). Overflow would allow 2^8, but the fp16-rounded (z−m₂)·2^{z−m₂} operands of the second
P·V product then cost sa_raw's Kerple gradients about 1% beyond the tolerance rule (slow length sweep, n=129);
2^3 keeps them within it and still skips the rescale on most tiles once the row maxima settle. Then l ← α l,
A0 ← α A0, A1'' ← α (A1'' + (m₂old − m₂new) A0) with α = 2^{m₂old − m₂new}. The result does not depend on where
the reference sits; only the rounding of the sums does.

The key loop is split: key tiles that every row sees whole run without masks; only the causal diagonal tiles and a
partial last tile (``EVEN_N`` false) build the mask.

Epilogue (a₂, m₂ in log2 units; a, δ in natural units, ``ln2 = 1/log2 e``):
    softmax  O = A0 / l
    sa       O = ln2·(A1'' + (m₂ − a₂) A0) / (δ l),  δ = ln2·(b₂ − a₂) + eps;  O_std = A0 / l
    sa_raw   O = ln2·(A1'' + m₂ A0) / l            (= A1 / l)
and, when a backward will follow, LSE₂ = m₂ + log2 l for every variant; for "sa" a, δ, argmin, argmax and O_std
(fp32); an fp32 copy of O for fp16/bf16 inputs.
"""
import triton
import triton.language as tl

from kernels.triton_common import (LN2, LOG2E, SA, SOFTMAX, causal_key_end, full_key_end, key_visible,
                                   load_bias_params, score_tile, tile_offset)

# Index larger than any key position: neutral element of the "first index attaining the extreme" min-reduction.
NO_INDEX = tl.constexpr(2**31 - 1)
RESCALE_THRESHOLD = tl.constexpr(3.0)


@triton.jit
def forward_tile(q, k_base, v_base, start_n, stride_kn, stride_vn, offs_d, d_ok, q_pos, N_K,
                 qk_scale, slope, kerple_p, kerple_a,
                 m_ref, m_max, m_min, l_i, acc0, acc1, argmax_i, argmin_i,
                 VARIANT: tl.constexpr, CAUSAL: tl.constexpr, BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 SAVE_FOR_BACKWARD: tl.constexpr, MASKED: tl.constexpr, EVEN_N: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """One key tile of the forward loop; returns the updated row state."""
    arange_n = tl.arange(0, BLOCK_N)
    offs_n = start_n + arange_n
    k_ptrs = k_base + tile_offset(start_n, stride_kn) + arange_n[None, :] * stride_kn + offs_d[:, None]
    v_ptrs = v_base + tile_offset(start_n, stride_vn) + arange_n[:, None] * stride_vn + offs_d[None, :]
    if MASKED and not EVEN_N:
        n_ok = offs_n < N_K
        k_t = tl.load(k_ptrs, mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        k_t = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)

    z = score_tile(q, k_t, q_pos, offs_n, qk_scale, slope, kerple_p, kerple_a, BIAS, DOT_PRECISION, False)
    if MASKED:
        visible = key_visible(q_pos, offs_n, N_K, CAUSAL, EVEN_N)
        z = tl.where(visible, z, float("-inf"))
    tile_max = tl.max(z, 1)
    if VARIANT == SA:
        if MASKED:
            z_for_min = tl.where(visible, z, float("inf"))
        else:
            z_for_min = z
        tile_min = tl.min(z_for_min, 1)
        if SAVE_FOR_BACKWARD:
            # First index attaining the extreme: smallest column within the tile; a later tile only takes over on a
            # strictly better value (tiles run in increasing key order). Skipped when no row improves.
            if tl.max((tile_max > m_max).to(tl.int32), 0) > 0:
                tile_argmax = tl.min(tl.where(z == tile_max[:, None], offs_n[None, :], NO_INDEX), 1)
                argmax_i = tl.where(tile_max > m_max, tile_argmax, argmax_i)
            if tl.max((tile_min < m_min).to(tl.int32), 0) > 0:
                tile_argmin = tl.min(tl.where(z_for_min == tile_min[:, None], offs_n[None, :], NO_INDEX), 1)
                argmin_i = tl.where(tile_min < m_min, tile_argmin, argmin_i)
        m_min = tl.minimum(m_min, tile_min)
    m_max = tl.maximum(m_max, tile_max)

    # Lazy rescale: move the reference max only when a row's max grew past it by more than the threshold. The first
    # tile always moves it (m_ref = −inf), and every row sees key 0 there, so m_ref is finite afterwards.
    if tl.max(tile_max - m_ref, 0) > RESCALE_THRESHOLD:
        m_new = tl.maximum(m_ref, tile_max)
        alpha = tl.exp2(m_ref - m_new)  # 0 on the first tile
        l_i = l_i * alpha
        if VARIANT != SOFTMAX:
            # A1'' ← α (A1'' + (m_old − m_new) A0); m_old − m_new is 0 on the first tile (A0 = 0 there anyway).
            shift = tl.where(m_ref == float("-inf"), 0.0, m_ref - m_new)
            acc1 = alpha[:, None] * (acc1 + shift[:, None] * acc0)
        acc0 = acc0 * alpha[:, None]
        m_ref = m_new

    z_centered = z - m_ref[:, None]
    p = tl.exp2(z_centered)  # 0 at masked entries
    l_i += tl.sum(p, 1)
    if VARIANT != SOFTMAX:
        # (z − m) is zeroed at masked entries (−inf · 0 would be NaN).
        if MASKED:
            z_centered = tl.where(visible, z_centered, 0.0)
        acc1 = tl.dot((z_centered * p).to(v.dtype), v, acc1, input_precision=DOT_PRECISION)
    acc0 = tl.dot(p.to(v.dtype), v, acc0, input_precision=DOT_PRECISION)
    return m_ref, m_max, m_min, l_i, acc0, acc1, argmax_i, argmin_i


@triton.jit(do_not_specialize=["N_Q_BUCKET", "N_K_BUCKET"])
def sa_forward_kernel(
    Q, K, V,                           # (B, H, N, D) inputs
    Out, OutF32, OutStd,               # (B, H, N_Q, D), one layout (stride_o*): O in q's dtype; fp32 O, O_std
    Lse, RowA, RowDelta, ArgMin, ArgMax,  # (B·H, N_Q) row statistics (Lse in log2 units)
    BiasParams,                        # (3, H) fp32: ALiBi slope, Kerple p, Kerple a
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    H, KV_GROUP, N_Q, N_K, HEAD_DIM, scale, eps,
    N_Q_BUCKET, N_K_BUCKET,            # autotune keys only (kernels/tuned_configs.py)
    VARIANT: tl.constexpr, CAUSAL: tl.constexpr, BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SAVE_FOR_BACKWARD: tl.constexpr, SAVE_FP32_OUT: tl.constexpr, EVEN_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    if CAUSAL:  # longest rows first: the last query blocks see the most keys
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        pid_m = tl.program_id(0)
    head = tl.program_id(1)
    batch = tl.program_id(2)
    bh = batch * H + head
    kv_head = head // KV_GROUP  # grouped-query attention: KV_GROUP query heads share one K/V head
    start_m = pid_m * BLOCK_M

    q_base = Q + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh + tile_offset(start_m, stride_qn)
    k_base = K + batch.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
    v_base = V + batch.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh

    arange_m = tl.arange(0, BLOCK_M)
    offs_m = start_m + arange_m
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM  # head dim padded to a power of two
    row_ok = offs_m < N_Q
    # Queries are aligned to the end of the keys: query i sits at position i + N_K − N_Q (kernels/bias.py).
    q_pos = offs_m + (N_K - N_Q)

    q = tl.load(q_base + arange_m[:, None] * stride_qn + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                other=0.0)
    slope, kerple_p, kerple_a = load_bias_params(BiasParams, H, head)
    qk_scale = scale * LOG2E

    m_ref = tl.full([BLOCK_M], float("-inf"), tl.float32)
    m_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    m_min = tl.full([BLOCK_M], float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc0 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc1 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    argmax_i = tl.zeros([BLOCK_M], tl.int32)
    argmin_i = tl.zeros([BLOCK_M], tl.int32)

    # Key tiles every row sees whole (no masks), then the causal diagonal / partial last tiles (masked). Tiles
    # entirely above the diagonal are skipped.
    full_end = full_key_end(start_m, N_Q, N_K, BLOCK_N, CAUSAL, EVEN_N)
    for start_n in range(0, full_end, BLOCK_N):
        m_ref, m_max, m_min, l_i, acc0, acc1, argmax_i, argmin_i = forward_tile(
            q, k_base, v_base, start_n, stride_kn, stride_vn, offs_d, d_ok, q_pos, N_K,
            qk_scale, slope, kerple_p, kerple_a, m_ref, m_max, m_min, l_i, acc0, acc1, argmax_i, argmin_i,
            VARIANT, CAUSAL, BIAS, DOT_PRECISION, SAVE_FOR_BACKWARD, False, EVEN_N, BLOCK_N)
    end = causal_key_end(start_m, N_Q, N_K, BLOCK_M, CAUSAL)
    for start_n in range(full_end, end, BLOCK_N):
        m_ref, m_max, m_min, l_i, acc0, acc1, argmax_i, argmin_i = forward_tile(
            q, k_base, v_base, start_n, stride_kn, stride_vn, offs_d, d_ok, q_pos, N_K,
            qk_scale, slope, kerple_p, kerple_a, m_ref, m_max, m_min, l_i, acc0, acc1, argmax_i, argmin_i,
            VARIANT, CAUSAL, BIAS, DOT_PRECISION, SAVE_FOR_BACKWARD, True, EVEN_N, BLOCK_N)

    # Epilogue.
    if VARIANT == SOFTMAX:
        out = acc0 / l_i[:, None]
    elif VARIANT == SA:
        a2 = tl.minimum(m_min, 0.0)
        b2 = tl.maximum(m_max, 0.0)
        delta = (b2 - a2) * LN2 + eps
        # A first causal row with x_00 < 0 has m₂ = a₂ = z_00 and A1'' = 0: O = 0.
        out = (acc1 + (m_ref - a2)[:, None] * acc0) * (1.0 / (delta * l_i) * LN2)[:, None]
    else:  # sa_raw: O = A1 / l
        out = (acc1 + m_ref[:, None] * acc0) * (1.0 / l_i * LN2)[:, None]
    o_off = (batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh + tile_offset(start_m, stride_on)
             + arange_m[:, None] * stride_on + offs_d[None, :])
    o_mask = row_ok[:, None] & d_ok[None, :]
    tl.store(Out + o_off, out.to(Out.dtype.element_ty), mask=o_mask)

    if SAVE_FOR_BACKWARD:
        stats_off = bh.to(tl.int64) * N_Q + offs_m
        tl.store(Lse + stats_off, m_ref + tl.log2(l_i), mask=row_ok)
        if SAVE_FP32_OUT:
            # The backward's D = rowsum(dO ∘ O) from an fp16/bf16-rounded O loses digits that the Kerple parameter
            # gradients (sums over all N² entries) notice; keep O in fp32 for it.
            tl.store(OutF32 + o_off, out, mask=o_mask)
        if VARIANT == SA:
            tl.store(OutStd + o_off, acc0 / l_i[:, None], mask=o_mask)
            tl.store(RowA + stats_off, a2 * LN2, mask=row_ok)
            tl.store(RowDelta + stats_off, delta, mask=row_ok)
            # −1 where the bound is clamped to 0 (x_min >= 0 / x_max <= 0): no gradient flows through a / b there.
            tl.store(ArgMin + stats_off, tl.where(m_min < 0.0, argmin_i, -1), mask=row_ok)
            tl.store(ArgMax + stats_off, tl.where(m_max > 0.0, argmax_i, -1), mask=row_ok)
