"""Dense attention with a hand-written backward: the CPU path for short sequences.

Like ``kernels.eager`` it materializes the scores, but a block of query rows at a time against only the keys those
rows can see (a causal mask leaves the rest out of every matmul), and with few passes: the forward keeps the
weights ``w`` and the softmax ``s`` of each block, the backward applies DESIGN §6's formulas (as ``kernels.chunked``
does) in ~5 in-place passes, where autograd through eager's elementwise graph takes ~30 and saves a dozen N x N
tensors. A block holds whole rows, so every row statistic is exact; no online rescaling. Same semantics as eager.
"""
import math

import torch

from kernels.problem import run_backend

DENSE_BLOCK_ROWS = 128  # measured on 2 CPU cores at s = 256-4096: 64-128 rows beat whole-matrix tiles by ~25%


def _forward_block(problem, q, k, v, q_start):
    """One block's output, its saved N x N tensors and its per-row SA statistics."""
    x, hidden = problem.scores(q, k, q_start, 0)
    sa = problem.variant == "sa"
    if sa:  # in place: a fresh N x N buffer costs more than a pass
        low, arg_low = (x if hidden is None else x.masked_fill_(hidden, math.inf)).min(dim=-1, keepdim=True)
    if hidden is not None:
        x.masked_fill_(hidden, -math.inf)
    if sa:
        high, arg_high = x.max(dim=-1, keepdim=True)
    s = torch.softmax(x, dim=-1)
    if problem.variant == "softmax":
        return torch.matmul(s.to(v.dtype), v), (s,), ()
    rows = ()
    if sa:
        a = low.clamp(max=0.0)
        delta = high.clamp(min=0.0) - a + problem.eps
        x.sub_(a)
        rows = (low, high, arg_low, arg_high, delta)
    if hidden is not None:
        x.masked_fill_(hidden, 0.0)  # x - a is -inf there, and -inf * 0 would be NaN
    w = x.mul_(s)  # (x - a) s: w times delta
    out = torch.matmul(w.to(v.dtype), v)
    return (out / delta if sa else out), (w, s), rows


def _backward_block(problem, q, k, v, dout, saved, rows):
    """dq of the block, its contributions to dk and dv, and its score gradient ``ds``.

    D = rowsum(dO * O) is taken as rowsum(dP * W) from the fp32 scores, not from O: with fp16/bf16 inputs O was
    rounded, and SA's gradient cancels large terms (a one-row SA output is 1 - eps/x), so D must match W exactly.
    """
    if problem.variant == "softmax":
        (s,) = saved
        dv = torch.matmul(s.transpose(-2, -1), dout)
        ds = torch.matmul(dout, v.transpose(-2, -1)).mul_(s)
        ds.addcmul_(s, ds.sum(dim=-1, keepdim=True), value=-1.0)  # s (dP - D)
    else:
        w, s = saved
        if problem.variant == "sa":
            low, high, arg_low, arg_high, delta = rows
            dout = dout / delta  # folds 1/delta into dP and into W^T dO
        dv = torch.matmul(w.transpose(-2, -1), dout)
        dp = torch.matmul(dout, v.transpose(-2, -1))
        # dS = s (dP (1 + x - a) - D) = s (dP - D) + dP w, with dP and w here already divided by delta.
        dp_w = dp * w
        d_row = dp_w.sum(dim=-1, keepdim=True)
        ds = dp.sub_(d_row).mul_(s)
        if problem.variant == "sa":
            s0 = (ds.sum(dim=-1, keepdim=True) + d_row) * delta  # rowsum(dO * softmax output); rows of s sum to 1
            zero = torch.zeros_like(d_row)
            # The first argmin/argmax carries the gradient of a = min(x_min, 0) and b = max(x_max, 0).
            ds.scatter_add_(-1, arg_low, torch.where(low < 0, (d_row - s0) / delta, zero))
            ds.scatter_add_(-1, arg_high, torch.where(high > 0, -d_row / delta, zero))
        ds.add_(dp_w)
    dq = torch.matmul(ds, k).mul_(problem.scale)
    dk = torch.matmul(ds.transpose(-2, -1), q).mul_(problem.scale)
    return dq, dk, dv, ds


def _blocks(problem):
    """(row slice, number of visible keys, start row) per query block."""
    for q_start in problem.query_starts():
        yield slice(q_start, q_start + problem.chunk), problem.visible_keys(q_start), q_start


class _DenseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kerple_p, kerple_a, problem):
        outs, blocks = [], []
        with torch.no_grad():
            for rows, keys, q_start in _blocks(problem):
                out, saved, stats = _forward_block(problem, q[:, :, rows], k[:, :, :keys], v[:, :, :keys], q_start)
                outs.append(out)
                blocks.append((saved, stats))
        out = torch.cat(outs, dim=2)
        ctx.problem = problem
        ctx.kerple_dtypes = None if kerple_p is None else (kerple_p.dtype, kerple_a.dtype)
        ctx.block_layout = [(len(saved), len(stats)) for saved, stats in blocks]
        # Through save_for_backward, so saved-tensor hooks (offloading, the planner's test) see the blocks too.
        ctx.save_for_backward(q, k, v, *(t for saved, stats in blocks for t in (*saved, *stats)))
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        problem = ctx.problem
        q, k, v, *flat = ctx.saved_tensors
        dtypes = q.dtype, k.dtype, v.dtype
        q, k, v, dout = (t.to(problem.stats) for t in (q, k, v, dout))
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        grad_p = grad_a = None
        if ctx.kerple_dtypes is not None:
            grad_p = torch.zeros(problem.heads, dtype=problem.stats, device=q.device)
            grad_a = torch.zeros_like(grad_p)
        for (rows, keys, q_start), (n_saved, n_stats) in zip(_blocks(problem), ctx.block_layout):
            saved, stats, flat = flat[:n_saved], flat[n_saved:n_saved + n_stats], flat[n_saved + n_stats:]
            dq[:, :, rows], block_dk, block_dv, ds = _backward_block(
                problem, q[:, :, rows], k[:, :, :keys], v[:, :, :keys], dout[:, :, rows], saved, stats)
            dk[:, :, :keys] += block_dk
            dv[:, :, :keys] += block_dv
            if grad_p is not None:
                block_p, block_a = problem.kerple_grads(ds, q_start, 0)
                grad_p += block_p
                grad_a += block_a
        if grad_p is not None:
            grad_p, grad_a = grad_p.to(ctx.kerple_dtypes[0]), grad_a.to(ctx.kerple_dtypes[1])
        return dq.to(dtypes[0]), dk.to(dtypes[1]), dv.to(dtypes[2]), grad_p, grad_a, None


def dense_attention(q, k, v, *, variant="sa", causal=True, scale=None, alibi_slopes=None, kerple=None, eps=1e-6,
                    block_rows=DENSE_BLOCK_ROWS):
    """SA / softmax attention over whole score rows, ``block_rows`` query rows at a time, with a custom backward.
    Same semantics as eager; keeps the visible part of the score matrix twice (w and s) for the backward."""
    return run_backend(_DenseAttention, q, k, v, tile=("block_rows", block_rows), variant=variant, causal=causal,
                       scale=scale, alibi_slopes=alibi_slopes, kerple=kerple, eps=eps)
