"""Position biases added to the scaled attention scores: ALiBi and Kerple-log.

Convention shared by every backend (eager, chunked, Triton), stated exactly:

- Query row ``i`` of a block sits at absolute position ``q_offset + i``, key column ``j`` at ``k_offset + j``.
  The attention entry points align queries to the *end* of the keys (``q_offset = n_k - n_q`` for the whole
  matrix), so with ``n_q == n_k`` both offsets are 0.
- The distance is ``d_ij = |(q_offset + i) - (k_offset + j)|``, always (causal or not). Under a causal mask every
  visible entry has ``i >= j`` so ``d_ij = i - j``; the masked upper triangle gets a finite value that is never
  used. Non-causal attention gets the symmetric ALiBi/Kerple bias.
- ALiBi:       ``bias[h, i, j] = -slope_h * d_ij``. Slopes are fixed: treated as constants (no gradient).
- Kerple-log:  ``bias[h, i, j] = -p_h * log(1 + a_h * d_ij)``. ``p`` and ``a`` are used as given (the model clamps
  them to >= 0.01); gradients flow to both:
  ``d bias / d p_h = -log(1 + a_h d_ij)``,  ``d bias / d a_h = -p_h d_ij / (1 + a_h d_ij)``.
"""
import torch


def relative_distance(n_q, n_k, *, dtype, device, q_offset=0, k_offset=0):
    """``|(q_offset + i) - (k_offset + j)|`` as an ``(n_q, n_k)`` tensor."""
    rows = torch.arange(q_offset, q_offset + n_q, device=device, dtype=dtype)
    cols = torch.arange(k_offset, k_offset + n_k, device=device, dtype=dtype)
    return (rows[:, None] - cols[None, :]).abs()


def position_bias(n_q, n_k, heads, alibi_slopes=None, kerple=None, *, dtype, device, q_offset=0, k_offset=0):
    """Bias of shape ``(heads, n_q, n_k)`` in ``dtype`` for one block of rows/cols, or None without a bias."""
    if alibi_slopes is None and kerple is None:
        return None
    distance = relative_distance(n_q, n_k, dtype=dtype, device=device, q_offset=q_offset, k_offset=k_offset)
    if alibi_slopes is not None:
        slopes = alibi_slopes.detach().to(dtype).reshape(heads, 1, 1)
        return -slopes * distance
    p, a = (param.to(dtype).reshape(heads, 1, 1) for param in kerple)
    return -p * torch.log1p(a * distance)


def kerple_param_grads(d_bias, p, a, distance):
    """Per-head gradients of Kerple ``p`` and ``a`` from ``d_bias`` of shape ``(heads, n_q, n_k)``."""
    heads = d_bias.shape[0]
    p = p.to(d_bias.dtype).reshape(heads, 1, 1)
    a = a.to(d_bias.dtype).reshape(heads, 1, 1)
    grad_p = -(d_bias * torch.log1p(a * distance)).sum(dim=(1, 2))
    grad_a = -(d_bias * p * distance / (1 + a * distance)).sum(dim=(1, 2))
    return grad_p, grad_a
