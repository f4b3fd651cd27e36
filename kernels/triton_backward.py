"""Triton backward pass of SA-Softmax attention (FlashAttention-2 layout; DESIGN §6 "Kernel math").

Three kernels, no atomics (deterministic):

1. ``sa_backward_preprocess_kernel``, per query row:
       D = rowsum(dO ∘ O),   S0 = rowsum(dO ∘ O_std),   Ga = (D − S0)/δ,   Gb = −D/δ,
       c1 = ln2/δ,   c0 = (1 − a)/δ
   (Ga / Gb only count where the forward stored an argmin / argmax, i.e. x_min < 0 / x_max > 0.)
2. ``sa_backward_dkdv_kernel``: one program per (key block, head, batch), looping over query blocks, in transposed
   form: it builds Sᵀ = K·Qᵀ (key rows, query columns), so dV += Wᵀ·dO and dK += dSᵀ·Q take W and dS as they
   come, with no transpose of a register tile through shared memory.
3. ``sa_backward_dq_kernel``: one program per (query block, head, batch), looping over key blocks; also the
   per-row sums of dS·∂bias/∂p and dS·∂bias/∂a for Kerple (summed per head in torch afterwards).

Scores are in log2 units, z = x·log2 e (kernels/triton_common.py), and s = 2^{z − LSE₂}. With dp = dO·vᵀ:
    softmax  w = s                       dS = s (dp − D)
    sa       f = z·c1 + c0 (= (1 + x − a)/δ),  w = s (f − 1/δ),  dS = s (dp f − D) + Ga [j = argmin] + Gb [j = argmax]
    sa_raw   w = x s                     dS = s (dp (1 + x) − D)
    dV = Wᵀ dO,   dK = scale · dSᵀ Q,   dQ = scale · dS K,   d bias = dS.
The one-hot terms are added in fp32 before dS is cast, and only on tiles that hold some row's argmin / argmax.
Both tile loops run unmasked over tiles that need no mask, and masked over the causal diagonal and partial tiles.
"""
import triton
import triton.language as tl

from kernels.triton_common import (KERPLE, LN2, LOG2E, SA, SOFTMAX, causal_key_end, full_key_end, key_visible,
                                   load_bias_params, log2_f32, score_tile, tile_offset)

PREPROCESS_BLOCK_M = 64


@triton.jit
def sa_backward_preprocess_kernel(
    Out, OutStd, DOut, RowA, RowDelta, ArgMin, ArgMax, RowD, RowGa, RowGb, RowC1, RowC0,
    stride_ob, stride_oh, stride_on,
    stride_db, stride_dh, stride_dn,
    H, N_Q, HEAD_DIM,
    VARIANT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    batch = tl.program_id(2)
    bh = batch * H + head
    start_m = pid_m * BLOCK_M
    arange_m = tl.arange(0, BLOCK_M)
    offs_m = start_m + arange_m
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < N_Q
    mask = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    o_ptrs = (batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh + tile_offset(start_m, stride_on)
              + arange_m[:, None] * stride_on + offs_d[None, :])
    d_ptrs = (batch.to(tl.int64) * stride_db + head.to(tl.int64) * stride_dh + tile_offset(start_m, stride_dn)
              + arange_m[:, None] * stride_dn + offs_d[None, :])
    do = tl.load(DOut + d_ptrs, mask=mask, other=0.0).to(tl.float32)
    o = tl.load(Out + o_ptrs, mask=mask, other=0.0).to(tl.float32)
    d_row = tl.sum(do * o, 1)
    stats_off = bh.to(tl.int64) * N_Q + offs_m
    tl.store(RowD + stats_off, d_row, mask=row_ok)
    if VARIANT == SA:
        o_std = tl.load(OutStd + o_ptrs, mask=mask, other=0.0).to(tl.float32)
        s0_row = tl.sum(do * o_std, 1)
        a_row = tl.load(RowA + stats_off, mask=row_ok, other=0.0)
        delta = tl.load(RowDelta + stats_off, mask=row_ok, other=1.0)
        has_min = tl.load(ArgMin + stats_off, mask=row_ok, other=-1) >= 0
        has_max = tl.load(ArgMax + stats_off, mask=row_ok, other=-1) >= 0
        inv_delta = 1.0 / delta
        tl.store(RowGa + stats_off, tl.where(has_min, (d_row - s0_row) * inv_delta, 0.0), mask=row_ok)
        tl.store(RowGb + stats_off, tl.where(has_max, -d_row * inv_delta, 0.0), mask=row_ok)
        tl.store(RowC1 + stats_off, inv_delta * LN2, mask=row_ok)
        tl.store(RowC0 + stats_off, (1.0 - a_row) * inv_delta, mask=row_ok)


@triton.jit
def load_row_stats(Lse, RowD, RowC1, RowC0, RowGa, RowGb, ArgMin, ArgMax, offs, row_ok, VARIANT: tl.constexpr):
    """Per-row LSE₂, D, and for "sa" c1, c0, Ga, Gb, argmin, argmax. Padding rows add nothing (−1: no argmin)."""
    lse = tl.load(Lse + offs, mask=row_ok, other=0.0)
    d_row = tl.load(RowD + offs, mask=row_ok, other=0.0)
    if VARIANT == SA:
        c1_row = tl.load(RowC1 + offs, mask=row_ok, other=0.0)
        c0_row = tl.load(RowC0 + offs, mask=row_ok, other=0.0)
        ga_row = tl.load(RowGa + offs, mask=row_ok, other=0.0)
        gb_row = tl.load(RowGb + offs, mask=row_ok, other=0.0)
        argmin_row = tl.load(ArgMin + offs, mask=row_ok, other=-1)
        argmax_row = tl.load(ArgMax + offs, mask=row_ok, other=-1)
    else:  # softmax / sa_raw read only D; the rest are placeholders that score_grad_tile ignores
        c1_row = d_row
        c0_row = d_row
        ga_row = d_row
        gb_row = d_row
        argmin_row = row_ok.to(tl.int32)
        argmax_row = argmin_row
    return lse, d_row, c1_row, c0_row, ga_row, gb_row, argmin_row, argmax_row


@triton.jit
def _row(t, TRANSPOSED: tl.constexpr):
    """A per-query-row vector broadcast over a tile: (M, 1), or (1, M) in the transposed (key-row) tiles."""
    if TRANSPOSED:
        return t[None, :]
    else:
        return t[:, None]


@triton.jit
def score_grad_tile(z, s, dp, d_row, c1_row, c0_row, ga_row, gb_row, argmin_row, argmax_row, start_n,
                    VARIANT: tl.constexpr, TRANSPOSED: tl.constexpr, BLOCK_N: tl.constexpr):
    """Weights w and score gradient dS (fp32) of one tile (formulas in the module docstring).

    Masked entries have s = 0 and a finite z, so w and dS vanish there; argmin/argmax always name a visible key.
    """
    if VARIANT == SOFTMAX:
        w = s
        ds = s * (dp - _row(d_row, TRANSPOSED))
    elif VARIANT == SA:
        c1 = _row(c1_row, TRANSPOSED)
        f = z * c1 + _row(c0_row, TRANSPOSED)
        w = s * (f - c1 * LOG2E)  # c1·log2e = 1/δ
        ds = s * (dp * f - _row(d_row, TRANSPOSED))
        end_n = start_n + BLOCK_N
        # One-hot terms through a and b, only on tiles holding some row's argmin / argmax.
        has_min = (argmin_row >= start_n) & (argmin_row < end_n)
        if tl.max(has_min.to(tl.int32), 0) > 0:
            if TRANSPOSED:
                hit = (start_n + tl.arange(0, BLOCK_N))[:, None] == argmin_row[None, :]
            else:
                hit = (start_n + tl.arange(0, BLOCK_N))[None, :] == argmin_row[:, None]
            ds += tl.where(hit, _row(ga_row, TRANSPOSED), 0.0)
        has_max = (argmax_row >= start_n) & (argmax_row < end_n)
        if tl.max(has_max.to(tl.int32), 0) > 0:
            if TRANSPOSED:
                hit = (start_n + tl.arange(0, BLOCK_N))[:, None] == argmax_row[None, :]
            else:
                hit = (start_n + tl.arange(0, BLOCK_N))[None, :] == argmax_row[:, None]
            ds += tl.where(hit, _row(gb_row, TRANSPOSED), 0.0)
    else:  # sa_raw
        x = z * LN2
        w = x * s
        ds = s * (dp * (1.0 + x) - _row(d_row, TRANSPOSED))
    return w, ds


@triton.jit
def dkdv_tile(k, v, q_base, do_base, start_m, stride_qn, stride_dn, offs_n, offs_d, d_ok, stats_base,
              Lse, RowD, RowC1, RowC0, RowGa, RowGb, ArgMin, ArgMax, N_Q, N_K, pos_shift, start_n,
              qk_scale, slope, kerple_p, kerple_a, dk, dv,
              VARIANT: tl.constexpr, CAUSAL: tl.constexpr, BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
              MASKED: tl.constexpr, EVEN_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One query tile of the dK/dV loop, transposed: tiles are (key rows, query columns)."""
    arange_m = tl.arange(0, BLOCK_M)
    offs_m = start_m + arange_m
    q_pos = offs_m + pos_shift
    q_ptrs = q_base + tile_offset(start_m, stride_qn) + arange_m[None, :] * stride_qn + offs_d[:, None]
    do_ptrs = do_base + tile_offset(start_m, stride_dn) + arange_m[:, None] * stride_dn + offs_d[None, :]
    if MASKED:
        row_ok = offs_m < N_Q
        q_t = tl.load(q_ptrs, mask=row_ok[None, :] & d_ok[:, None], other=0.0)
        do = tl.load(do_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        row_ok = offs_m >= 0
        q_t = tl.load(q_ptrs, mask=d_ok[:, None], other=0.0)
        do = tl.load(do_ptrs, mask=d_ok[None, :], other=0.0)
    lse, d_row, c1_row, c0_row, ga_row, gb_row, argmin_row, argmax_row = load_row_stats(
        Lse, RowD, RowC1, RowC0, RowGa, RowGb, ArgMin, ArgMax, stats_base + offs_m, row_ok, VARIANT)

    z = score_tile(k, q_t, q_pos, offs_n, qk_scale, slope, kerple_p, kerple_a, BIAS, DOT_PRECISION, True)
    if MASKED:
        if EVEN_N:
            visible = row_ok[None, :]
        else:
            visible = row_ok[None, :] & (offs_n < N_K)[:, None]
        if CAUSAL:
            visible = visible & (offs_n[:, None] <= q_pos[None, :])
        s = tl.where(visible, tl.exp2(z - lse[None, :]), 0.0)
    else:
        s = tl.exp2(z - lse[None, :])
    dp = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    w, ds = score_grad_tile(z, s, dp, d_row, c1_row, c0_row, ga_row, gb_row, argmin_row, argmax_row, start_n,
                            VARIANT, True, BLOCK_N)
    dv = tl.dot(w.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    dk = tl.dot(ds.to(q_t.dtype), tl.trans(q_t), dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit(do_not_specialize=["N_Q_BUCKET", "N_K_BUCKET"])
def sa_backward_dkdv_kernel(
    Q, K, V, DOut, DK, DV,              # DK / DV: (B, H, N_K, D) per *query* head (GQA groups summed in torch)
    Lse, RowD, RowC1, RowC0, RowGa, RowGb, ArgMin, ArgMax,
    BiasParams,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_db, stride_dh, stride_dn,    # dO
    stride_gb, stride_gh, stride_gn,    # DK / DV
    H, KV_GROUP, N_Q, N_K, HEAD_DIM, scale,
    N_Q_BUCKET, N_K_BUCKET,
    VARIANT: tl.constexpr, CAUSAL: tl.constexpr, BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    EVEN_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)  # the first key blocks see the most queries: they run first
    head = tl.program_id(1)
    batch = tl.program_id(2)
    bh = batch * H + head
    kv_head = head // KV_GROUP
    start_n = pid_n * BLOCK_N

    arange_n = tl.arange(0, BLOCK_N)
    offs_n = start_n + arange_n
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    k_ptrs = (K + batch.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
              + tile_offset(start_n, stride_kn) + arange_n[:, None] * stride_kn + offs_d[None, :])
    v_ptrs = (V + batch.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh
              + tile_offset(start_n, stride_vn) + arange_n[:, None] * stride_vn + offs_d[None, :])
    if EVEN_N:
        kv_mask = d_ok[None, :] & (offs_n >= 0)[:, None]
    else:
        kv_mask = (offs_n < N_K)[:, None] & d_ok[None, :]
    k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
    v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    q_base = Q + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
    do_base = DOut + batch.to(tl.int64) * stride_db + head.to(tl.int64) * stride_dh
    stats_base = bh.to(tl.int64) * N_Q
    slope, kerple_p, kerple_a = load_bias_params(BiasParams, H, head)
    qk_scale = scale * LOG2E
    pos_shift = N_K - N_Q  # query i sits at position i + N_K − N_Q

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # Query tiles: [lo, diag_end) masked (causal diagonal: some row misses some key of this block), then
    # [diag_end, full_end) unmasked, then the partial last tile (and everything, if this key block is partial) masked.
    if CAUSAL:
        lo = tl.maximum(start_n - pos_shift, 0) // BLOCK_M * BLOCK_M
        diag_end = tl.maximum(lo, tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - pos_shift, 0), BLOCK_M) * BLOCK_M)
        diag_end = tl.minimum(diag_end, tl.cdiv(N_Q, BLOCK_M) * BLOCK_M)
    else:
        lo = 0
        diag_end = 0
    if EVEN_N:
        full_end = tl.maximum(diag_end, N_Q // BLOCK_M * BLOCK_M)
    else:
        full_end = tl.where(start_n + BLOCK_N <= N_K, tl.maximum(diag_end, N_Q // BLOCK_M * BLOCK_M), diag_end)
    for start_m in range(lo, diag_end, BLOCK_M):
        dk, dv = dkdv_tile(k, v, q_base, do_base, start_m, stride_qn, stride_dn, offs_n, offs_d, d_ok, stats_base,
                           Lse, RowD, RowC1, RowC0, RowGa, RowGb, ArgMin, ArgMax, N_Q, N_K, pos_shift, start_n,
                           qk_scale, slope, kerple_p, kerple_a, dk, dv,
                           VARIANT, CAUSAL, BIAS, DOT_PRECISION, True, EVEN_N, BLOCK_M, BLOCK_N)
    for start_m in range(diag_end, full_end, BLOCK_M):
        dk, dv = dkdv_tile(k, v, q_base, do_base, start_m, stride_qn, stride_dn, offs_n, offs_d, d_ok, stats_base,
                           Lse, RowD, RowC1, RowC0, RowGa, RowGb, ArgMin, ArgMax, N_Q, N_K, pos_shift, start_n,
                           qk_scale, slope, kerple_p, kerple_a, dk, dv,
                           VARIANT, CAUSAL, BIAS, DOT_PRECISION, False, EVEN_N, BLOCK_M, BLOCK_N)
    for start_m in range(full_end, N_Q, BLOCK_M):
        dk, dv = dkdv_tile(k, v, q_base, do_base, start_m, stride_qn, stride_dn, offs_n, offs_d, d_ok, stats_base,
                           Lse, RowD, RowC1, RowC0, RowGa, RowGb, ArgMin, ArgMax, N_Q, N_K, pos_shift, start_n,
                           qk_scale, slope, kerple_p, kerple_a, dk, dv,
                           VARIANT, CAUSAL, BIAS, DOT_PRECISION, True, EVEN_N, BLOCK_M, BLOCK_N)

    g_off = (batch.to(tl.int64) * stride_gb + head.to(tl.int64) * stride_gh + tile_offset(start_n, stride_gn)
             + arange_n[:, None] * stride_gn + offs_d[None, :])
    tl.store(DK + g_off, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def dq_tile(q, do, k_base, v_base, start_n, stride_kn, stride_vn, offs_d, d_ok, q_pos, row_ok, N_K,
            lse, d_row, c1_row, c0_row, ga_row, gb_row, argmin_row, argmax_row,
            qk_scale, slope, kerple_p, kerple_a, dq, grad_p, grad_a,
            VARIANT: tl.constexpr, CAUSAL: tl.constexpr, BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
            MASKED: tl.constexpr, EVEN_N: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key tile of the dQ loop."""
    arange_n = tl.arange(0, BLOCK_N)
    offs_n = start_n + arange_n
    k_ptrs = k_base + tile_offset(start_n, stride_kn) + arange_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = v_base + tile_offset(start_n, stride_vn) + arange_n[None, :] * stride_vn + offs_d[:, None]
    if MASKED and not EVEN_N:
        n_ok = offs_n < N_K
        k = tl.load(k_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v_t = tl.load(v_ptrs, mask=n_ok[None, :] & d_ok[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs, mask=d_ok[None, :], other=0.0)
        v_t = tl.load(v_ptrs, mask=d_ok[:, None], other=0.0)
    z = score_tile(q, tl.trans(k), q_pos, offs_n, qk_scale, slope, kerple_p, kerple_a, BIAS, DOT_PRECISION, False)
    if MASKED:
        visible = key_visible(q_pos, offs_n, N_K, CAUSAL, EVEN_N) & row_ok[:, None]
        s = tl.where(visible, tl.exp2(z - lse[:, None]), 0.0)
    else:
        s = tl.exp2(z - lse[:, None])
    dp = tl.dot(do, v_t, input_precision=DOT_PRECISION)
    w, ds = score_grad_tile(z, s, dp, d_row, c1_row, c0_row, ga_row, gb_row, argmin_row, argmax_row, start_n,
                            VARIANT, False, BLOCK_N)
    dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    if BIAS == KERPLE:
        # d bias/dp = −ln(1 + a d),  d bias/da = −p d / (1 + a d),  d = |i − j|; dS is 0 where masked.
        distance = tl.abs(q_pos[:, None] - offs_n[None, :]).to(tl.float32)
        one_plus = 1.0 + kerple_a * distance
        grad_p += tl.sum(-ds * log2_f32(one_plus), 1) * LN2
        grad_a += tl.sum(-ds * distance / one_plus, 1) * kerple_p
    return dq, grad_p, grad_a


@triton.jit(do_not_specialize=["N_Q_BUCKET", "N_K_BUCKET"])
def sa_backward_dq_kernel(
    Q, K, V, DOut, DQ,                  # DQ: (B, H, N_Q, D), its own strides (stride_g*)
    Lse, RowD, RowC1, RowC0, RowGa, RowGb, ArgMin, ArgMax,
    BiasParams, RowGradP, RowGradA,      # Kerple: per-row Σ_j dS·∂bias/∂p and Σ_j dS·∂bias/∂a, (B·H, N_Q) fp32
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_db, stride_dh, stride_dn,    # dO
    stride_gb, stride_gh, stride_gn,    # DQ
    H, KV_GROUP, N_Q, N_K, HEAD_DIM, scale,
    N_Q_BUCKET, N_K_BUCKET,
    VARIANT: tl.constexpr, CAUSAL: tl.constexpr, BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    EVEN_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    if CAUSAL:  # longest rows first
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        pid_m = tl.program_id(0)
    head = tl.program_id(1)
    batch = tl.program_id(2)
    bh = batch * H + head
    kv_head = head // KV_GROUP
    start_m = pid_m * BLOCK_M

    arange_m = tl.arange(0, BLOCK_M)
    offs_m = start_m + arange_m
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = offs_m < N_Q
    q_pos = offs_m + (N_K - N_Q)
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh + tile_offset(start_m, stride_qn)
                + arange_m[:, None] * stride_qn + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DOut + batch.to(tl.int64) * stride_db + head.to(tl.int64) * stride_dh
                 + tile_offset(start_m, stride_dn) + arange_m[:, None] * stride_dn + offs_d[None, :],
                 mask=q_mask, other=0.0)
    stats_off = bh.to(tl.int64) * N_Q + offs_m
    lse, d_row, c1_row, c0_row, ga_row, gb_row, argmin_row, argmax_row = load_row_stats(
        Lse, RowD, RowC1, RowC0, RowGa, RowGb, ArgMin, ArgMax, stats_off, row_ok, VARIANT)
    k_base = K + batch.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
    v_base = V + batch.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh
    slope, kerple_p, kerple_a = load_bias_params(BiasParams, H, head)
    qk_scale = scale * LOG2E

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    grad_p = tl.zeros([BLOCK_M], tl.float32)
    grad_a = tl.zeros([BLOCK_M], tl.float32)
    full_end = full_key_end(start_m, N_Q, N_K, BLOCK_N, CAUSAL, EVEN_N)
    for start_n in range(0, full_end, BLOCK_N):
        dq, grad_p, grad_a = dq_tile(q, do, k_base, v_base, start_n, stride_kn, stride_vn, offs_d, d_ok, q_pos,
                                     row_ok, N_K, lse, d_row, c1_row, c0_row, ga_row, gb_row, argmin_row,
                                     argmax_row, qk_scale, slope, kerple_p, kerple_a, dq, grad_p, grad_a,
                                     VARIANT, CAUSAL, BIAS, DOT_PRECISION, False, EVEN_N, BLOCK_N)
    end = causal_key_end(start_m, N_Q, N_K, BLOCK_M, CAUSAL)
    for start_n in range(full_end, end, BLOCK_N):
        dq, grad_p, grad_a = dq_tile(q, do, k_base, v_base, start_n, stride_kn, stride_vn, offs_d, d_ok, q_pos,
                                     row_ok, N_K, lse, d_row, c1_row, c0_row, ga_row, gb_row, argmin_row,
                                     argmax_row, qk_scale, slope, kerple_p, kerple_a, dq, grad_p, grad_a,
                                     VARIANT, CAUSAL, BIAS, DOT_PRECISION, True, EVEN_N, BLOCK_N)

    g_off = (batch.to(tl.int64) * stride_gb + head.to(tl.int64) * stride_gh + tile_offset(start_m, stride_gn)
             + arange_m[:, None] * stride_gn + offs_d[None, :])
    tl.store(DQ + g_off, (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)
    if BIAS == KERPLE:
        tl.store(RowGradP + stats_off, grad_p, mask=row_ok)
        tl.store(RowGradA + stats_off, grad_a, mask=row_ok)
