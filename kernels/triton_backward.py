"""Triton backward pass of SA-Softmax attention (FlashAttention-2 layout; DESIGN §6 "Kernel math").

Three kernels, no atomics (deterministic):

1. ``sa_backward_preprocess_kernel``, per query row:
       D = rowsum(dO ∘ O),   S0 = rowsum(dO ∘ O_std),   Ga = (D − S0)/δ,   Gb = −D/δ
   (Ga / Gb only count where the forward stored an argmin / argmax, i.e. x_min < 0 / x_max > 0.)
2. ``sa_backward_dkdv_kernel``: one program per (key block, batch·head), looping over query blocks.
3. ``sa_backward_dq_kernel``: one program per (query block, batch·head), looping over key blocks; also the
   per-row sums of dS·∂bias/∂p and dS·∂bias/∂a for Kerple (summed per head in torch afterwards).

Both tile kernels recompute s = exp(x − LSE) and, with dp = dO·vᵀ:
    softmax  w = s                 dS = s (dp − D)
    sa       w = (x − a) s / δ     dS = s (dp (1 + x − a)/δ − D) + Ga [j = argmin] + Gb [j = argmax]
    sa_raw   w = x s               dS = s (dp (1 + x) − D)
    dV = Wᵀ dO,   dK = scale · dSᵀ Q,   dQ = scale · dS K,   d bias = dS.
"""
import triton
import triton.language as tl

from kernels.triton_common import (KERPLE, SA, SOFTMAX, autotune, causal_key_end, key_visible, load_bias_params,
                                   score_tile)

# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried on a GPU; the last of each is a small fallback (head_dim 256).
DKDV_CONFIGS = [(64, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 3), (32, 64, 4, 3), (16, 64, 4, 4), (16, 32, 4, 1)]
DQ_CONFIGS = [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 3), (64, 16, 4, 4), (32, 16, 4, 1)]
PREPROCESS_BLOCK_M = 64


@triton.jit
def sa_backward_preprocess_kernel(
    Out, OutStd, DOut, RowDelta, ArgMin, ArgMax, RowD, RowGa, RowGb,
    stride_ob, stride_oh, stride_on,
    stride_db, stride_dh, stride_dn,
    H, N_Q, HEAD_DIM,
    VARIANT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    batch = (bh // H).to(tl.int64)
    head = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < N_Q
    mask = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    o_ptrs = batch * stride_ob + head * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :]
    d_ptrs = batch * stride_db + head * stride_dh + offs_m[:, None] * stride_dn + offs_d[None, :]
    do = tl.load(DOut + d_ptrs, mask=mask, other=0.0).to(tl.float32)
    o = tl.load(Out + o_ptrs, mask=mask, other=0.0).to(tl.float32)
    d_row = tl.sum(do * o, 1)
    stats_off = bh.to(tl.int64) * N_Q + offs_m
    tl.store(RowD + stats_off, d_row, mask=row_ok)
    if VARIANT == SA:
        o_std = tl.load(OutStd + o_ptrs, mask=mask, other=0.0).to(tl.float32)
        s0_row = tl.sum(do * o_std, 1)
        delta = tl.load(RowDelta + stats_off, mask=row_ok, other=1.0)
        has_min = tl.load(ArgMin + stats_off, mask=row_ok, other=-1) >= 0
        has_max = tl.load(ArgMax + stats_off, mask=row_ok, other=-1) >= 0
        tl.store(RowGa + stats_off, tl.where(has_min, (d_row - s0_row) / delta, 0.0), mask=row_ok)
        tl.store(RowGb + stats_off, tl.where(has_max, -d_row / delta, 0.0), mask=row_ok)


@triton.jit
def load_row_stats(RowD, RowA, RowDelta, RowGa, RowGb, ArgMin, ArgMax, offs, row_ok, VARIANT: tl.constexpr):
    """Per-row D, and for "sa" a, δ, Ga, Gb, argmin, argmax. Padding rows get values under which they add nothing."""
    d_row = tl.load(RowD + offs, mask=row_ok, other=0.0)
    if VARIANT == SA:
        a_row = tl.load(RowA + offs, mask=row_ok, other=0.0)
        delta_row = tl.load(RowDelta + offs, mask=row_ok, other=1.0)
        ga_row = tl.load(RowGa + offs, mask=row_ok, other=0.0)
        gb_row = tl.load(RowGb + offs, mask=row_ok, other=0.0)
        argmin_row = tl.load(ArgMin + offs, mask=row_ok, other=-1)
        argmax_row = tl.load(ArgMax + offs, mask=row_ok, other=-1)
    else:  # softmax / sa_raw read only D; the rest are placeholders that score_grad_tile ignores
        a_row = d_row
        delta_row = d_row
        ga_row = d_row
        gb_row = d_row
        argmin_row = row_ok.to(tl.int32)
        argmax_row = argmin_row
    return d_row, a_row, delta_row, ga_row, gb_row, argmin_row, argmax_row


@triton.jit
def score_grad_tile(x, s, dp, d_row, a_row, delta_row, ga_row, gb_row, argmin_row, argmax_row, offs_n,
                    VARIANT: tl.constexpr):
    """Weights w and score gradient dS of one tile (formulas in the module docstring).

    Masked entries have s = 0 and a finite x, so w and dS vanish there; argmin/argmax always name a visible key.
    """
    if VARIANT == SOFTMAX:
        w = s
        ds = s * (dp - d_row[:, None])
    elif VARIANT == SA:
        x_minus_a = x - a_row[:, None]
        inv_delta = 1.0 / delta_row[:, None]
        w = x_minus_a * s * inv_delta
        ds = s * (dp * (1.0 + x_minus_a) * inv_delta - d_row[:, None])
        ds += tl.where(offs_n[None, :] == argmin_row[:, None], ga_row[:, None], 0.0)
        ds += tl.where(offs_n[None, :] == argmax_row[:, None], gb_row[:, None], 0.0)
    else:  # sa_raw
        w = x * s
        ds = s * (dp * (1.0 + x) - d_row[:, None])
    return w, ds


@autotune(DKDV_CONFIGS, key=["N_Q", "N_K", "HEAD_DIM", "VARIANT", "CAUSAL", "BIAS"])
@triton.jit
def sa_backward_dkdv_kernel(
    Q, K, V, DOut, DK, DV,              # DK / DV: (B, H, N_K, D) per *query* head (GQA groups summed in torch)
    Lse, RowA, RowDelta, ArgMin, ArgMax, RowD, RowGa, RowGb,
    BiasParams,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_db, stride_dh, stride_dn,    # dO
    stride_gb, stride_gh, stride_gn,    # DK / DV
    H, KV_GROUP, N_Q, N_K, HEAD_DIM, scale,
    VARIANT: tl.constexpr, CAUSAL: tl.constexpr, BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    batch = (bh // H).to(tl.int64)
    head = bh % H
    kv_head = (head // KV_GROUP).to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    n_ok = offs_n < N_K
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k_t = tl.load(K + batch * stride_kb + kv_head * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None],
                  mask=n_ok[None, :] & d_ok[:, None], other=0.0)
    v_t = tl.load(V + batch * stride_vb + kv_head * stride_vh + offs_n[None, :] * stride_vn + offs_d[:, None],
                  mask=n_ok[None, :] & d_ok[:, None], other=0.0)
    q_base = Q + batch * stride_qb + head.to(tl.int64) * stride_qh
    do_base = DOut + batch * stride_db + head.to(tl.int64) * stride_dh
    stats_base = bh.to(tl.int64) * N_Q
    slope, kerple_p, kerple_a = load_bias_params(BiasParams, H, head)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # Causal: query blocks whose rows all sit before this key block see none of it; start at the first one
    # containing query position >= pid_n·BLOCK_N (query i is at position i + N_K − N_Q).
    if CAUSAL:
        lo = tl.maximum(pid_n * BLOCK_N - (N_K - N_Q), 0) // BLOCK_M * BLOCK_M
    else:
        lo = 0
    for start_m in range(lo, N_Q, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N_Q
        q_pos = offs_m + (N_K - N_Q)
        q_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dn + offs_d[None, :], mask=q_mask, other=0.0)
        stats_off = stats_base + offs_m
        lse = tl.load(Lse + stats_off, mask=row_ok, other=0.0)
        d_row, a_row, delta_row, ga_row, gb_row, argmin_row, argmax_row = load_row_stats(
            RowD, RowA, RowDelta, RowGa, RowGb, ArgMin, ArgMax, stats_off, row_ok, VARIANT)

        x = score_tile(q, k_t, q_pos, offs_n, scale, slope, kerple_p, kerple_a, BIAS, DOT_PRECISION)
        visible = key_visible(q_pos, offs_n, N_K, CAUSAL) & row_ok[:, None]
        s = tl.where(visible, tl.exp(x - lse[:, None]), 0.0)
        dp = tl.dot(do, v_t, input_precision=DOT_PRECISION)
        w, ds = score_grad_tile(x, s, dp, d_row, a_row, delta_row, ga_row, gb_row, argmin_row, argmax_row,
                                offs_n, VARIANT)
        dv = tl.dot(tl.trans(w.to(do.dtype)), do, dv, input_precision=DOT_PRECISION)
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk, input_precision=DOT_PRECISION)

    g_off = batch * stride_gb + head.to(tl.int64) * stride_gh + offs_n[:, None] * stride_gn + offs_d[None, :]
    tl.store(DK + g_off, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=kv_mask)


@autotune(DQ_CONFIGS, key=["N_Q", "N_K", "HEAD_DIM", "VARIANT", "CAUSAL", "BIAS"])
@triton.jit
def sa_backward_dq_kernel(
    Q, K, V, DOut, DQ,                  # DQ: (B, H, N_Q, D), its own strides (stride_g*)
    Lse, RowA, RowDelta, ArgMin, ArgMax, RowD, RowGa, RowGb,
    BiasParams, RowGradP, RowGradA,      # Kerple: per-row Σ_j dS·∂bias/∂p and Σ_j dS·∂bias/∂a, (B·H, N_Q) fp32
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_db, stride_dh, stride_dn,    # dO
    stride_gb, stride_gh, stride_gn,    # DQ
    H, KV_GROUP, N_Q, N_K, HEAD_DIM, scale,
    VARIANT: tl.constexpr, CAUSAL: tl.constexpr, BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    batch = (bh // H).to(tl.int64)
    head = bh % H
    kv_head = (head // KV_GROUP).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = offs_m < N_Q
    q_pos = offs_m + (N_K - N_Q)
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + batch * stride_qb + head.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qn
                + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DOut + batch * stride_db + head.to(tl.int64) * stride_dh + offs_m[:, None] * stride_dn
                 + offs_d[None, :], mask=q_mask, other=0.0)
    stats_off = bh.to(tl.int64) * N_Q + offs_m
    lse = tl.load(Lse + stats_off, mask=row_ok, other=0.0)
    d_row, a_row, delta_row, ga_row, gb_row, argmin_row, argmax_row = load_row_stats(
        RowD, RowA, RowDelta, RowGa, RowGb, ArgMin, ArgMax, stats_off, row_ok, VARIANT)
    k_base = K + batch * stride_kb + kv_head * stride_kh
    v_base = V + batch * stride_vb + kv_head * stride_vh
    slope, kerple_p, kerple_a = load_bias_params(BiasParams, H, head)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    grad_p = tl.zeros([BLOCK_M], tl.float32)
    grad_a = tl.zeros([BLOCK_M], tl.float32)
    hi = causal_key_end(pid_m, N_Q, N_K, BLOCK_M, CAUSAL)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N_K
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :],
                    other=0.0)
        v_t = tl.load(v_base + offs_n[None, :] * stride_vn + offs_d[:, None], mask=n_ok[None, :] & d_ok[:, None],
                      other=0.0)
        x = score_tile(q, tl.trans(k), q_pos, offs_n, scale, slope, kerple_p, kerple_a, BIAS, DOT_PRECISION)
        visible = key_visible(q_pos, offs_n, N_K, CAUSAL) & row_ok[:, None]
        s = tl.where(visible, tl.exp(x - lse[:, None]), 0.0)
        dp = tl.dot(do, v_t, input_precision=DOT_PRECISION)
        w, ds = score_grad_tile(x, s, dp, d_row, a_row, delta_row, ga_row, gb_row, argmin_row, argmax_row,
                                offs_n, VARIANT)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
        if BIAS == KERPLE:
            # d bias/dp = −log(1 + a d),  d bias/da = −p d / (1 + a d),  d = |i − j|; dS is 0 where masked.
            distance = tl.abs(q_pos[:, None] - offs_n[None, :]).to(tl.float32)
            one_plus = 1.0 + kerple_a * distance
            grad_p += tl.sum(-ds * tl.log(one_plus), 1)
            grad_a += tl.sum(-ds * kerple_p * distance / one_plus, 1)

    g_off = batch * stride_gb + head.to(tl.int64) * stride_gh + offs_m[:, None] * stride_gn + offs_d[None, :]
    tl.store(DQ + g_off, (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)
    if BIAS == KERPLE:
        tl.store(RowGradP + stats_off, grad_p, mask=row_ok)
        tl.store(RowGradA + stats_off, grad_a, mask=row_ok)
