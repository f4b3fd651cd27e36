"""``sa_attention``: the one entry point to every attention backend (DESIGN §6)."""
import math

import torch

from kernels.chunked import chunked_attention
from kernels.dense import dense_attention
from kernels.eager import VARIANTS, eager_attention
from kernels.sdpa import sdpa_attention

BACKENDS = ("auto", "sdpa", "triton", "dense", "chunked", "eager")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Up to this many scores the dense path's saved w and s (2 x 4 bytes per visible score) are affordable; it beats the
# chunked path's online rescaling at every length measured (256-4096), so memory sets the limit.
DENSE_MAX_SCORES = 512 * 512


def sa_attention(q, k, v, *, variant="sa", causal=True, scale=None, alibi_slopes=None, kerple=None, eps=1e-6,
                 backend="auto"):
    """SA-Softmax (or plain softmax) attention over ``(batch, heads, seq, head_dim)`` tensors.

    variant: "softmax" | "sa" | "sa_raw". scale defaults to ``1/sqrt(head_dim)``. alibi_slopes: ``(heads,)``
    tensor (fixed, no gradient); kerple: ``(p, a)`` pair of ``(heads,)`` tensors (gradients flow); at most one.
    K/V may have fewer heads than q when that number divides the query heads (grouped-query attention).
    When ``n_q != n_k`` queries align to the end of the keys; causal then needs ``n_q <= n_k``.
    backend: "sdpa" (torch's scaled_dot_product_attention: softmax without Kerple only), "triton" (CUDA, or CPU
    with TRITON_INTERPRET=1), "dense" (whole score rows a block at a time, custom backward), "chunked" (O(N * chunk)
    memory), "eager" (materializes N x N through autograd; the reference), "auto" (sdpa for softmax without Kerple
    on every device; else triton for CUDA fp16/bf16/fp32, else dense when ``n_q * n_k <= 512 * 512``, else chunked).
    """
    check_inputs(q, k, v, variant, scale, alibi_slopes, kerple, eps, backend)
    options = dict(variant=variant, causal=causal, scale=scale, alibi_slopes=alibi_slopes, kerple=kerple, eps=eps)
    backend = _resolve_backend(backend, variant, kerple, q, k)
    if backend == "triton":
        return _triton()(q, k, v, **options)
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if backend == "sdpa":
        return sdpa_attention(q, k, v, causal=causal, scale=scale, alibi_slopes=alibi_slopes)
    attention = {"dense": dense_attention, "chunked": chunked_attention, "eager": eager_attention}[backend]
    return attention(q, k, v, **options)


def _resolve_backend(backend, variant, kerple, q, k):
    if backend != "auto":
        return backend
    if variant == "softmax" and kerple is None:
        return "sdpa"
    if q.device.type == "cuda" and q.dtype in TRITON_DTYPES:
        return "triton"
    return "dense" if q.shape[2] * k.shape[2] <= DENSE_MAX_SCORES else "chunked"


def _triton():
    # Imported lazily: triton is optional on CPU. triton_attention itself rejects CPU tensors without the interpreter.
    try:
        from kernels.triton_attention import triton_attention
    except ImportError as error:
        raise RuntimeError(f"backend='triton' needs the triton package: {error}") from error
    return triton_attention


def check_inputs(q, k, v, variant, scale, alibi_slopes, kerple, eps, backend):
    """ValueError naming the argument for anything every backend rejects (backend-specific limits: the backend)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "sdpa" and (variant != "softmax" or kerple is not None):
        raise ValueError("backend='sdpa' runs softmax attention without a Kerple bias only; "
                         f"got variant={variant!r}{' with kerple' if kerple is not None else ''}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-D tensor (batch, heads, seq, head_dim), got {shape}")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name}.dtype must be one of {FLOAT_DTYPES}, got {t.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    batch, heads, n_q, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k and v must be (batch={batch}, kv_heads, n_k, head_dim={head_dim}), "
                         f"got {tuple(k.shape)}")
    if k.shape[1] == 0 or heads % k.shape[1] != 0:
        raise ValueError(f"k/v heads ({k.shape[1]}) must divide the query heads ({heads})")
    if n_q == 0 or k.shape[2] == 0 or head_dim == 0:
        raise ValueError(f"sequence lengths and head_dim must be positive, got n_q={n_q}, n_k={k.shape[2]}, "
                         f"head_dim={head_dim}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number or None, got {scale!r}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be a positive number (it keeps delta = b - a + eps nonzero), got {eps!r}")
    _check_bias(alibi_slopes, kerple, heads, q.device)


def _check_bias(alibi_slopes, kerple, heads, device):
    if alibi_slopes is not None and kerple is not None:
        raise ValueError("pass at most one of alibi_slopes and kerple, got both")
    if alibi_slopes is not None:
        _check_head_vector("alibi_slopes", alibi_slopes, heads, device)
    if kerple is not None:
        if not isinstance(kerple, (tuple, list)) or len(kerple) != 2:
            raise ValueError(f"kerple must be a pair (p, a) of ({heads},) tensors, got {type(kerple).__name__}")
        _check_head_vector("kerple p", kerple[0], heads, device)
        _check_head_vector("kerple a", kerple[1], heads, device)


def _check_head_vector(name, t, heads, device):
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != (heads,):
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a ({heads},) tensor (one value per query head), got {shape}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} must be on q's device {device}, got {t.device}")
