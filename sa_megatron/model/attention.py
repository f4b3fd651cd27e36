"""Causal self-attention: fused QKV projection, position encoding, the `kernels` attention core, output projection.

QKV weight layout (rows of the ColumnParallelLinear): (heads, 3, head_dim) — for each head its q rows, then k rows,
then v rows. A tensor-parallel rank's contiguous row shard therefore holds complete q, k, v of its own heads, and
`split_qkv` can slice any weight-shaped tensor (the weight, its bias, their gradients) into q, k, v parts.
"""
import math
from typing import Optional

import torch
from torch import nn

import kernels
from kernels.bias import position_bias
from kernels.eager import attention_weights, statistics_dtype
from sa_megatron.config.schema import ModelConfig
from sa_megatron.model.init import InitMethods
from sa_megatron.model.position import DapeScoreMLP, KerpleLogBias, RotaryEmbedding, alibi_slopes
from sa_megatron.parallel import ColumnParallelLinear, RowParallelLinear, tensor_parallel_rank
from sa_megatron.parallel.layers import shard_size

class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, init: InitMethods):
        super().__init__()
        hidden, heads = config.hidden_size, config.num_attention_heads
        self.head_dim = hidden // heads
        self.local_heads = shard_size(heads, "model.num_attention_heads")
        local = slice(tensor_parallel_rank() * self.local_heads, (tensor_parallel_rank() + 1) * self.local_heads)
        self.variant, self.eps, self.backend = config.attention, config.attention_eps, config.attention_backend
        position = config.position_encoding
        self.scale = 1.0 / math.sqrt(self.head_dim)

        self.qkv = ColumnParallelLinear(hidden, 3 * hidden, bias=config.bias, init_method=init.input_side)
        self.dense = RowParallelLinear(hidden, hidden, bias=config.bias, init_method=init.output_projection)
        self.rotary = RotaryEmbedding(self.head_dim, config.rope_base) if position == "rope" else None
        if position == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(heads)[local].clone(), persistent=False)
        else:
            self.alibi_slopes = None
        uses_dape = position == "dapev2-kerple"
        self.kerple = KerpleLogBias(heads, local) if uses_dape or position == "kerple" else None
        self.dape = DapeScoreMLP(self.local_heads, init.input_side) if uses_dape else None
        # Set by GPTModel.attention_row_mass: the next forward also stores the mean row mass in `row_mass`.
        self.measure_row_mass = False
        self.row_mass: Optional[torch.Tensor] = None

    def split_qkv(self, tensor: torch.Tensor):
        """Split a QKV-weight-shaped tensor (rows first: weight, bias or their gradients) into q, k, v parts, each
        of shape (local_heads · head_dim, *rest)."""
        per_head = tensor.reshape(self.local_heads, 3, self.head_dim, *tensor.shape[1:])
        return tuple(per_head[:, i].reshape(self.local_heads * self.head_dim, *tensor.shape[1:]) for i in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, hidden) → (B, N, hidden); (B, N/tp, hidden) both ways under sequence parallelism."""
        q, k, v = self.project_qkv(x)
        if self.measure_row_mass:
            # v = ones puts each row's weight sum Σ_j w_ij in every output column (the kernels need v's head dim
            # to equal k's, so the probe is as wide as v).
            with torch.no_grad():
                self.row_mass = self.attend(q, k, torch.ones_like(v))[..., 0].float().mean()
        return self.project_out(self.attend(q, k, v))

    def project_qkv(self, x: torch.Tensor, first_position: int = 0):
        """x (B, N, hidden) → q, k, v, each (B, H, N, D), q and k rotated when the model uses RoPE.

        `first_position`: the position of x's first token (nonzero only for generation with a KV cache)."""
        qkv = self.qkv(x)  # the whole sequence, also when x is this rank's part of it (sequence parallelism)
        batch, seq, _ = qkv.shape
        qkv = qkv.view(batch, seq, self.local_heads, 3, self.head_dim)
        # unbind: one backward that writes all three gradients into one buffer (three selects would each
        # zero-fill a full-size gradient buffer)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(3))  # each (B, H, N, D)
        if self.rotary is not None:
            q, k = self.rotary(q, k, first_position)
        return q, k, v

    def project_out(self, out: torch.Tensor) -> torch.Tensor:
        """The attention core's output (B, H, N, D) → (B, N, hidden) through the output projection."""
        batch, _, seq, _ = out.shape
        return self.dense(out.transpose(1, 2).reshape(batch, seq, self.local_heads * self.head_dim))

    def attend(self, q, k, v):
        """The attention core on (B, H, N, D) tensors, with this layer's variant and position bias."""
        kerple = self.kerple() if self.kerple is not None else None
        if self.dape is not None:
            return self._attend_dape(q, k, v, kerple)
        return kernels.sa_attention(q, k, v, variant=self.variant, causal=True, scale=self.scale,
                                    alibi_slopes=self.alibi_slopes, kerple=kerple, eps=self.eps, backend=self.backend)

    def _attend_dape(self, q, k, v, kerple):
        """DAPE-V2 over Kerple-log. Eager only: the MLP reads the full (B, H, N, N) score matrix, which the fused
        and chunked kernels never materialize."""
        seq = q.shape[-2]
        scores = torch.matmul(q, k.transpose(-2, -1)).to(statistics_dtype(q.dtype)) * self.scale
        scores = scores + position_bias(seq, seq, self.local_heads, kerple=kerple, dtype=scores.dtype, device=q.device)
        weights = attention_weights(self.dape(scores), variant=self.variant, causal=True, eps=self.eps)
        return torch.matmul(weights.to(v.dtype), v)
