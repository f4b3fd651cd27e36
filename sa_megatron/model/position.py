"""Position encodings used inside attention: RoPE, ALiBi slopes, Kerple-log parameters and the DAPE-V2 score MLP.

(Learned absolute positions live with the token embedding, in `stages.py`.) Per-head quantities are built for all
heads and sliced to this tensor-parallel rank's heads, so a head keeps its slope / parameters whatever the TP size.
"""
import math

import torch
from torch import nn

from sa_megatron.parallel.layers import mark_sharded


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi's fixed slopes (Press et al. 2022): the geometric sequence 2^(-8/n), 2^(-16/n), ... for n = num_heads
    when n is a power of two; otherwise the sequence for the next lower power of two, followed by every other slope
    of the sequence for twice that, until there are n slopes."""
    def geometric(n):
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    power = 2 ** math.floor(math.log2(num_heads))
    slopes = geometric(power) + geometric(2 * power)[0::2][: num_heads - power]
    return torch.tensor(slopes, dtype=torch.float32)


class RotaryEmbedding(nn.Module):
    """RoPE over the full head dim, GPT-NeoX "rotate half" layout: dims (i, i + D/2) form one rotating pair."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rope needs an even head dim, got {head_dim}")
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        # Not persistent: derived from config, so checkpoints need not carry it.
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, first_position: int = 0):
        """Rotate q, k of shape (B, H, N, D) by their positions first_position..first_position+N-1 (angles in fp32,
        fp64 for fp64 inputs). Generation with a KV cache passes the cache length as `first_position`."""
        dtype = torch.promote_types(q.dtype, torch.float32)
        positions = torch.arange(first_position, first_position + q.shape[-2], device=q.device, dtype=dtype)
        angles = torch.outer(positions, self.inv_freq.to(q.device, dtype))
        cos, sin = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    @staticmethod
    def _rotate(x, cos, sin):
        wide = x.to(cos.dtype)
        first, second = wide.chunk(2, dim=-1)
        return (wide * cos + torch.cat((-second, first), dim=-1) * sin).to(x.dtype)


class KerpleLogBias(nn.Module):
    """Learned per-head Kerple-log parameters: bias_ij = -p_h · log(1 + a_h · (i - j)) (applied by the kernels).

    Initialized U(0, 2) and U(0, 1); `forward` returns them clamped to ≥ 0.01 so the bias stays a valid
    (conditionally positive definite) kernel. The clamp passes the gradient through unchanged (straight-through):
    a plain clamp has zero gradient below the bound, so a parameter starting or pushed there would never move again.
    """

    MIN_VALUE = 0.01

    def __init__(self, num_heads: int, local_heads: slice):
        super().__init__()
        # Drawn for all heads, then sliced: the same values whatever the tensor-parallel size.
        self.kerple_p = mark_sharded(nn.Parameter(torch.empty(num_heads).uniform_(0.0, 2.0)[local_heads].clone()), 0)
        self.kerple_a = mark_sharded(nn.Parameter(torch.empty(num_heads).uniform_(0.0, 1.0)[local_heads].clone()), 0)

    def forward(self):
        return (_ClampMinPassingGradient.apply(self.kerple_p, self.MIN_VALUE),
                _ClampMinPassingGradient.apply(self.kerple_a, self.MIN_VALUE))


class _ClampMinPassingGradient(torch.autograd.Function):
    """`x.clamp(min=minimum)` exactly in value, with the identity's gradient (the `x + (clamp(x) - x).detach()`
    idiom is off by rounding, so a raw value below the floor would not act exactly like the floor)."""

    @staticmethod
    def forward(ctx, x, minimum):
        return x.clamp(min=minimum)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class DapeScoreMLP(nn.Module):
    """DAPE-V2's learned refinement of the attention scores: at every (i, j) a two-layer MLP over the heads
    dimension maps the biased scores of all heads to a correction, added residually:

        scores ← scores + W2 · gelu(W1 · scores[:, :, i, j] + b1) + b2    (W1: heads → width, W2: width → heads)

    It mixes heads at one (i, j) only, so causality is untouched. Under tensor parallelism it sees this rank's heads.
    """

    WIDTH = 32  # DAPE's small hidden width: the MLP runs on every score entry, so it must stay cheap.

    def __init__(self, num_heads: int, init_method):
        super().__init__()
        self.fc_in = nn.Linear(num_heads, self.WIDTH)
        self.fc_out = nn.Linear(self.WIDTH, num_heads)
        for layer in (self.fc_in, self.fc_out):
            init_method(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        """scores: (B, H, N, N) → refined scores of the same shape and dtype."""
        per_entry = scores.permute(0, 2, 3, 1)
        correction = self.fc_out(nn.functional.gelu(self.fc_in(per_entry.to(self.fc_in.weight.dtype))))
        return scores + correction.permute(0, 3, 1, 2).to(scores.dtype)
