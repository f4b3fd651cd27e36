"""`Problem`: one attention call's settings and the tile arithmetic the PyTorch backends (chunked, dense) share, and
`run_backend`, their common entry."""
import math
from dataclasses import dataclass

import torch

from kernels.bias import kerple_param_grads, position_bias, relative_distance
from kernels.eager import VARIANTS, causal_visible, check_causal_lengths, statistics_dtype


@dataclass
class Problem:
    """Everything about one call except the tensors that autograd tracks per tile."""
    variant: str
    causal: bool
    scale: float
    eps: float
    chunk: int
    n_q: int
    n_k: int
    heads: int
    stats: torch.dtype
    alibi_slopes: torch.Tensor | None
    kerple: tuple | None

    @property
    def shift(self):
        """Absolute position of query row 0 (queries align to the end of the keys)."""
        return self.n_k - self.n_q

    def query_starts(self):
        return range(0, self.n_q, self.chunk)

    def visible_keys(self, q_start):
        """How many keys (``0 ..``) some query of the tile at ``q_start`` can see."""
        return min(q_start + self.chunk, self.n_q) + self.shift if self.causal else self.n_k

    def key_starts(self, q_start):
        """Key tiles that some query of the tile at ``q_start`` can see (fully hidden causal tiles are skipped)."""
        return range(0, self.visible_keys(q_start), self.chunk)

    def scores(self, q_tile, k_tile, q_start, k_start):
        """Scaled, biased scores of one tile in the statistics dtype, and its hidden mask (None if all visible)."""
        n_q, n_k = q_tile.shape[-2], k_tile.shape[-2]
        x = torch.matmul(q_tile, k_tile.transpose(-2, -1)).to(self.stats).mul_(self.scale)  # fresh: scale in place
        bias = position_bias(n_q, n_k, self.heads, self.alibi_slopes, self.kerple, dtype=self.stats,
                             device=x.device, q_offset=q_start + self.shift, k_offset=k_start)
        if bias is not None:
            x.add_(bias)  # x is fresh
        hidden = None
        if self.causal and k_start + n_k - 1 > q_start + self.shift:
            hidden = ~causal_visible(n_q, n_k, device=x.device, q_offset=q_start + self.shift, k_offset=k_start)
        return x, hidden


    def kerple_grads(self, ds, q_start, k_start):
        """Per-head gradients of Kerple's (p, a) from one tile's score gradient ``ds`` (B, H, n_q, n_k)."""
        distance = relative_distance(ds.shape[-2], ds.shape[-1], dtype=self.stats, device=ds.device,
                                     q_offset=q_start + self.shift, k_offset=k_start)
        return kerple_param_grads(ds.sum(dim=0), *self.kerple, distance)


def run_backend(function, q, k, v, *, tile, variant, causal, scale, alibi_slopes, kerple, eps):
    """Checks what the PyTorch backends share, fixes the call's Problem and runs the backend's autograd `function`
    (arguments q, k, v, Kerple's p and a, the Problem: p and a go apart, detached in the Problem, because the backends
    return their gradients by hand). `tile`: (the backend's argument name, its tile size)."""
    tile_name, tile_size = tile
    if tile_size < 1:
        raise ValueError(f"{tile_name} must be >= 1, got {tile_size}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    n_q, n_k = q.shape[-2], k.shape[-2]
    if causal:
        check_causal_lengths(n_q, n_k)
    stats = statistics_dtype(q.dtype)
    kerple_params = None if kerple is None else tuple(t.detach().to(stats) for t in kerple)
    problem = Problem(variant=variant, causal=causal, scale=1.0 / math.sqrt(q.shape[-1]) if scale is None else scale,
                      eps=eps, chunk=tile_size, n_q=n_q, n_k=n_k, heads=q.shape[1], stats=stats,
                      alibi_slopes=alibi_slopes, kerple=kerple_params)
    kerple_p, kerple_a = (None, None) if kerple is None else kerple
    return function.apply(q, k, v, kerple_p, kerple_a, problem)
