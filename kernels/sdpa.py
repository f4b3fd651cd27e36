"""Softmax attention through torch's `scaled_dot_product_attention`: FlashAttention-2 or cuDNN kernels on GPU and a
flash kernel on CPU (about 10× our eager softmax at 8×6×256×64 on 2 cores), for the softmax variant without Kerple.

ALiBi goes in as an additive float mask (with -inf above the causal diagonal); queries align to the end of the keys
as in every backend (`kernels/eager.py`), which is SDPA's `is_causal` only when n_q == n_k, else a boolean mask.
"""
import math

import torch.nn.functional as F

from kernels.bias import position_bias
from kernels.eager import check_causal_lengths, causal_visible


def sdpa_attention(q, k, v, *, causal=True, scale=None, alibi_slopes=None):
    n_q, n_k = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if causal:
        check_causal_lengths(n_q, n_k)
    if alibi_slopes is None and (not causal or n_q == n_k):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    visible = causal_visible(n_q, n_k, device=q.device, q_offset=n_k - n_q) if causal else None
    if alibi_slopes is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale)
    bias = position_bias(n_q, n_k, q.shape[1], alibi_slopes, dtype=q.dtype, device=q.device, q_offset=n_k - n_q)
    if visible is not None:
        bias = bias.masked_fill(~visible, -math.inf)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
