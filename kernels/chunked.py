"""Memory-efficient attention in pure PyTorch: the online (FlashAttention-style) SA math over tiles.

Never materializes the ``n_q x n_k`` score matrix: memory is O(N * chunk). The forward keeps, per query row, a
running max ``m`` (with its first argmax), a running min over visible entries (with its first argmin),
``l = sum e^{x-m}``, ``A0 = sum e^{x-m} v`` and ``A1' = sum (x-m) e^{x-m} v`` (DESIGN §6). The backward recomputes
each tile from the saved log-sum-exp and applies the DESIGN §6 formulas, including the argmin/argmax terms.
Same semantics as ``kernels.eager`` (queries aligned to the end of the keys; causal needs ``n_q <= n_k``).
"""
import math

import torch

from kernels.problem import run_backend


def _row_extremes_update(best, best_index, tile_values, tile_index, k_start, better):
    """Keep the first index attaining the running extreme: a later tile wins only if strictly better."""
    improves = better(tile_values, best)
    return torch.where(improves, tile_values, best), torch.where(improves, tile_index + k_start, best_index)


def _forward(problem, q, k, v):
    """Returns out and the per-row statistics the backward needs, all in the statistics dtype."""
    q, k, v = (t.to(problem.stats) for t in (q, k, v))
    batch, heads, n_q, _ = q.shape
    row_shape = (batch, heads, n_q)
    stats, device = problem.stats, q.device
    out = torch.empty(*row_shape, v.shape[-1], dtype=stats, device=device)
    lse = torch.empty(row_shape, dtype=stats, device=device)
    out_std = x_min = x_max = arg_min = arg_max = None
    if problem.variant == "sa":
        out_std = torch.empty_like(out)
        x_min, x_max = torch.empty_like(lse), torch.empty_like(lse)
        arg_min = torch.empty(row_shape, dtype=torch.long, device=device)
        arg_max = torch.empty_like(arg_min)
    for q_start in problem.query_starts():
        rows = slice(q_start, q_start + problem.chunk)
        q_tile = q[:, :, rows]
        shape = q_tile.shape[:-1]
        m = torch.full(shape, -math.inf, dtype=stats, device=device)
        low = torch.full(shape, math.inf, dtype=stats, device=device)
        m_index = torch.zeros(shape, dtype=torch.long, device=device)
        low_index = torch.zeros_like(m_index)
        l = torch.zeros(shape, dtype=stats, device=device)
        a0 = torch.zeros(*shape, v.shape[-1], dtype=stats, device=device)
        a1 = torch.zeros_like(a0)
        for k_start in problem.key_starts(q_start):
            cols = slice(k_start, k_start + problem.chunk)
            x, hidden = problem.scores(q_tile, k[:, :, cols], q_start, k_start)
            for_max = x if hidden is None else x.masked_fill(hidden, -math.inf)
            m_new, m_index = _row_extremes_update(m, m_index, *for_max.max(dim=-1), k_start, torch.gt)
            if problem.variant == "sa":
                for_min = x if hidden is None else x.masked_fill(hidden, math.inf)
                low, low_index = _row_extremes_update(low, low_index, *for_min.min(dim=-1), k_start, torch.lt)
            e = torch.exp(for_max - m_new[..., None])
            alpha = torch.exp(m - m_new)
            v_tile = v[:, :, cols]
            if problem.variant != "softmax":
                # A1' <- alpha (A1' + (m_old - m_new) A0); on the first tile A0 = 0 and m_old = -inf.
                drift = torch.where(torch.isinf(m), torch.zeros_like(m), m - m_new)
                x_e = (x - m_new[..., None]) * e  # hidden entries: finite x times e = 0
                a1 = alpha[..., None] * (a1 + drift[..., None] * a0) + torch.matmul(x_e, v_tile)
            a0 = alpha[..., None] * a0 + torch.matmul(e, v_tile)
            l = alpha * l + e.sum(dim=-1)
            m = m_new
        lse[:, :, rows] = m + torch.log(l)
        if problem.variant == "softmax":
            out[:, :, rows] = a0 / l[..., None]
        elif problem.variant == "sa_raw":
            out[:, :, rows] = (a1 + m[..., None] * a0) / l[..., None]
        else:
            a = torch.clamp(low, max=0.0)
            delta = torch.clamp(m, min=0.0) - a + problem.eps
            out[:, :, rows] = (a1 + (m - a)[..., None] * a0) / (delta * l)[..., None]
            out_std[:, :, rows] = a0 / l[..., None]
            x_min[:, :, rows], x_max[:, :, rows] = low, m
            arg_min[:, :, rows], arg_max[:, :, rows] = low_index, m_index
    return out, out_std, lse, x_min, x_max, arg_min, arg_max


def _backward(problem, q, k, v, dout, out, out_std, lse, x_min, x_max, arg_min, arg_max):
    stats = problem.stats
    q, k, v, dout = (t.to(stats) for t in (q, k, v, dout))
    d_row = (dout * out).sum(dim=-1)  # D = rowsum(dO * O)
    if problem.variant == "sa":
        a = torch.clamp(x_min, max=0.0)
        delta = torch.clamp(x_max, min=0.0) - a + problem.eps
        s0 = (dout * out_std).sum(dim=-1)
        zero = torch.zeros_like(d_row)
        grad_at_min = torch.where(x_min < 0, (d_row - s0) / delta, zero)
        grad_at_max = torch.where(x_max > 0, -d_row / delta, zero)
    dq = torch.zeros_like(q, dtype=stats)
    dk = torch.zeros_like(k, dtype=stats)
    dv = torch.zeros_like(v, dtype=stats)
    grad_p = grad_a = None
    if problem.kerple is not None:
        grad_p = torch.zeros(problem.heads, dtype=stats, device=q.device)
        grad_a = torch.zeros_like(grad_p)
    for q_start in problem.query_starts():
        rows = slice(q_start, q_start + problem.chunk)
        q_tile, dout_tile = q[:, :, rows], dout[:, :, rows]
        lse_tile, d_tile = lse[:, :, rows, None], d_row[:, :, rows, None]
        for k_start in problem.key_starts(q_start):
            cols = slice(k_start, k_start + problem.chunk)
            k_tile, v_tile = k[:, :, cols], v[:, :, cols]
            x, hidden = problem.scores(q_tile, k_tile, q_start, k_start)
            s = torch.exp(x - lse_tile)
            if hidden is not None:
                s = s.masked_fill(hidden, 0.0)
            dp = torch.matmul(dout_tile, v_tile.transpose(-2, -1))
            if problem.variant == "softmax":
                w, ds = s, s * (dp - d_tile)
            elif problem.variant == "sa_raw":
                w, ds = x * s, s * (dp * (1 + x) - d_tile)
            else:
                a_tile, delta_tile = a[:, :, rows, None], delta[:, :, rows, None]
                w = (x - a_tile) * s / delta_tile
                ds = s * (dp * (1 + x - a_tile) / delta_tile - d_tile)
                columns = torch.arange(k_start, k_start + k_tile.shape[-2], device=q.device)
                ds = ds + grad_at_min[:, :, rows, None] * (columns == arg_min[:, :, rows, None])
                ds = ds + grad_at_max[:, :, rows, None] * (columns == arg_max[:, :, rows, None])
            dv[:, :, cols] += torch.matmul(w.transpose(-2, -1), dout_tile)
            ds_scaled = ds * problem.scale
            dq[:, :, rows] += torch.matmul(ds_scaled, k_tile)
            dk[:, :, cols] += torch.matmul(ds_scaled.transpose(-2, -1), q_tile)
            if grad_p is not None:
                tile_p, tile_a = problem.kerple_grads(ds, q_start, k_start)
                grad_p += tile_p
                grad_a += tile_a
    return dq, dk, dv, grad_p, grad_a


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kerple_p, kerple_a, problem):
        with torch.no_grad():
            out, *saved = _forward(problem, q, k, v)
        ctx.problem = problem
        ctx.kerple_dtypes = None if kerple_p is None else (kerple_p.dtype, kerple_a.dtype)
        ctx.save_for_backward(q, k, v, out, *saved)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, out_std, *saved = ctx.saved_tensors
        dq, dk, dv, grad_p, grad_a = _backward(ctx.problem, q, k, v, dout.contiguous(), out, out_std, *saved)
        if grad_p is not None:
            grad_p, grad_a = grad_p.to(ctx.kerple_dtypes[0]), grad_a.to(ctx.kerple_dtypes[1])
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), grad_p, grad_a, None


def chunked_attention(q, k, v, *, variant="sa", causal=True, scale=None, alibi_slopes=None, kerple=None, eps=1e-6,
                      chunk_size=256):
    """SA / softmax attention in O(N * chunk_size) memory, with a custom backward. Same semantics as eager."""
    return run_backend(_ChunkedAttention, q, k, v, tile=("chunk_size", chunk_size), variant=variant, causal=causal,
                       scale=scale, alibi_slopes=alibi_slopes, kerple=kerple, eps=eps)
