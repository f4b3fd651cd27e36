"""Eager attention: materializes the full score matrix. The semantic reference for every other backend.

Shapes follow ``torch.nn.functional.scaled_dot_product_attention``: ``(batch, heads, seq, head_dim)``.
When ``n_q != n_k`` queries are aligned to the *end* of the keys (as in flash-attn): query ``i`` sits at position
``i + n_k - n_q``; under a causal mask it sees keys ``j <= i + n_k - n_q``, so causal needs ``n_q <= n_k``.
"""
import math

import torch

from kernels.bias import position_bias

VARIANTS = ("softmax", "sa", "sa_raw")


def statistics_dtype(dtype):
    """Scores and row statistics live in fp32, or fp64 when the inputs are fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def causal_visible(n_q, n_k, *, device, q_offset=0, k_offset=0):
    """Boolean ``(n_q, n_k)``: key position ``k_offset + j`` is visible to query position ``q_offset + i``."""
    rows = torch.arange(q_offset, q_offset + n_q, device=device)
    cols = torch.arange(k_offset, k_offset + n_k, device=device)
    return cols[None, :] <= rows[:, None]


def check_causal_lengths(n_q, n_k):
    if n_q > n_k:
        raise ValueError(f"causal attention needs n_q <= n_k (queries align to the end of the keys); "
                         f"got n_q={n_q}, n_k={n_k}")


def attention_weights(scores, *, variant, causal, eps):
    """Attention weights ``w`` (rows need not sum to 1) from scaled, biased scores of shape (B, H, Nq, Nk)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    n_q, n_k = scores.shape[-2:]
    if causal:
        check_causal_lengths(n_q, n_k)
        hidden = ~causal_visible(n_q, n_k, device=scores.device, q_offset=n_k - n_q)
        for_max = scores.masked_fill(hidden, -math.inf)
        for_min = scores.masked_fill(hidden, math.inf)
        # Zero, not -inf, at hidden entries: x * s there must be 0 * 0, not -inf * 0 = NaN.
        x = scores.masked_fill(hidden, 0.0)
    else:
        for_max = for_min = x = scores
    s = torch.softmax(for_max, dim=-1)
    if variant == "softmax":
        return s
    if variant == "sa_raw":
        return x * s
    # gather at argmin/argmax routes the gradient to the first extreme index only (amin/amax would split ties).
    x_max = for_max.gather(-1, for_max.argmax(dim=-1, keepdim=True))
    x_min = for_min.gather(-1, for_min.argmin(dim=-1, keepdim=True))
    zero = torch.zeros_like(x_min)
    # where, not clamp: no gradient reaches x_min / x_max unless strictly negative / positive.
    a = torch.where(x_min < 0, x_min, zero)
    b = torch.where(x_max > 0, x_max, zero)
    delta = b - a + eps
    return (x - a) / delta * s


def eager_attention(q, k, v, *, variant="sa", causal=True, scale=None, alibi_slopes=None, kerple=None, eps=1e-6):
    """Reference attention. Scores, statistics and weights in fp32 (fp64 for fp64 inputs); matmuls in q's dtype."""
    stats = statistics_dtype(q.dtype)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    n_q, n_k = q.shape[-2], k.shape[-2]
    scores = torch.matmul(q, k.transpose(-2, -1)).to(stats) * scale
    bias = position_bias(n_q, n_k, q.shape[1], alibi_slopes, kerple, dtype=stats, device=q.device,
                         q_offset=n_k - n_q)
    if bias is not None:
        scores = scores + bias
    weights = attention_weights(scores, variant=variant, causal=causal, eps=eps)
    return torch.matmul(weights.to(v.dtype), v)
