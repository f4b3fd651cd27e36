"""Fused Triton SA-Softmax attention: the autograd wrapper around the forward/backward kernels.

``triton_attention(q, k, v, *, variant, causal, scale, alibi_slopes, kerple, eps)`` takes SDPA-layout tensors
``(batch, heads, seq, head_dim)`` with any strides whose last one is 1 (other tensors are copied). K/V may have
fewer heads that divide the query heads (grouped-query attention). It is differentiable with respect to q, k, v
and the Kerple ``(p, a)`` parameters. Semantics are DESIGN §6's, shared with ``kernels/eager.py``; the bias
convention is ``kernels/bias.py``'s.

Runs on CUDA tensors (launched on ``q.device``, whatever the current device), or on CPU tensors when
``TRITON_INTERPRET=1`` was set before triton was imported. Block sizes come from ``kernels/tuned_configs.py``.

fp32 inputs follow ``torch.get_float32_matmul_precision()``: "highest" (torch's default) gives IEEE fp32 dots,
"high" / "medium" TF32 dots, as torch's own fp32 matmuls do.
"""
import contextlib
import math

import torch
import triton
from torch.autograd.function import once_differentiable

from kernels.api import check_inputs
from kernels.eager import check_causal_lengths
from kernels.triton_backward import (PREPROCESS_BLOCK_M, sa_backward_dkdv_kernel, sa_backward_dq_kernel,
                                     sa_backward_preprocess_kernel)
from kernels.triton_common import INTERPRET, VARIANT_CODES, check_row_strides, launch_grid
from kernels.triton_forward import sa_forward_kernel
from kernels.tuned_configs import launch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def _bias_code(alibi_slopes, kerple):
    return 1 if alibi_slopes is not None else 2 if kerple is not None else 0


def _dot_precision(dtype):
    # fp32: IEEE products under torch's default "highest" fp32 matmul precision, TF32 when the user allowed it.
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _on_device(t):
    """Launch on the tensor's own GPU, not the current device (a no-op for CPU tensors under the interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _check_strides(*tensors):
    for t in tensors:
        check_row_strides(256, t.stride(2))  # 256: above every tile edge that tuned_configs offers


def _block_d(head_dim):
    return max(16, triton.next_power_of_2(head_dim))  # tl.dot needs every dimension >= 16


def _unit_last_stride(t):
    # The kernels take batch/head/sequence strides (e.g. a (B, N, H, D) QKV projection viewed as (B, H, N, D)
    # needs no copy) but read head_dim contiguously.
    return t if t.stride(-1) == 1 else t.contiguous()


def _bhn_strides(t):
    return t.stride(0), t.stride(1), t.stride(2)


class _TritonSAAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kerple_p, kerple_a, alibi_slopes, variant, causal, scale, eps, needs_backward):
        batch, heads, n_q, head_dim = q.shape
        kv_heads, n_k = k.shape[1], k.shape[2]
        q, k, v = _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
        code = VARIANT_CODES[variant]
        bias = _bias_code(alibi_slopes, kerple_p)
        bias_params = torch.zeros(3, heads, device=q.device, dtype=torch.float32)
        if alibi_slopes is not None:
            bias_params[0] = alibi_slopes.detach().float()
        if kerple_p is not None:
            bias_params[1] = kerple_p.detach().float()
            bias_params[2] = kerple_a.detach().float()

        out = torch.empty_like(q)
        # State for the backward (DESIGN §6), only when one will follow; ``out`` stands in for buffers that
        # this call's kernel never touches.
        save_fp32_out = needs_backward and q.dtype != torch.float32
        out_f32 = out_std = lse = row_a = row_delta = argmin = argmax = out
        if needs_backward:
            stats = dict(device=q.device, dtype=torch.float32)
            lse = torch.empty(batch * heads, n_q, **stats)
            if save_fp32_out:
                out_f32 = torch.empty_like(q, dtype=torch.float32)
            if variant == "sa":
                out_std = torch.empty_like(q, dtype=torch.float32)
                row_a = torch.empty(batch * heads, n_q, **stats)
                row_delta = torch.empty(batch * heads, n_q, **stats)
                argmin = torch.empty(batch * heads, n_q, device=q.device, dtype=torch.int32)
                argmax = torch.empty(batch * heads, n_q, device=q.device, dtype=torch.int32)

        _check_strides(q, k, v, out)
        with _on_device(q):
            launch("forward", sa_forward_kernel, lambda bm, bn: launch_grid(triton.cdiv(n_q, bm), batch, heads),
                   (q, k, v, out, out_f32, out_std, lse, row_a, row_delta, argmin, argmax, bias_params,
                    *_bhn_strides(q), *_bhn_strides(k), *_bhn_strides(v), *_bhn_strides(out),
                    heads, heads // kv_heads, n_q, n_k, head_dim, scale, eps),
                   variant=variant, dtype=q.dtype, block_d=_block_d(head_dim), causal=causal, n_q=n_q, n_k=n_k,
                   VARIANT=code, CAUSAL=causal, BIAS=bias, DOT_PRECISION=_dot_precision(q.dtype),
                   SAVE_FOR_BACKWARD=needs_backward, SAVE_FP32_OUT=save_fp32_out, BLOCK_D=_block_d(head_dim))
        ctx.save_for_backward(q, k, v, out_f32, out_std, lse, row_a, row_delta, argmin, argmax, bias_params)
        ctx.options = (variant, causal, scale, bias)
        ctx.kerple_dtype = kerple_p.dtype if kerple_p is not None else None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        q, k, v, out_f32, out_std, lse, row_a, row_delta, argmin, argmax, bias_params = ctx.saved_tensors
        variant, causal, scale, bias = ctx.options
        batch, heads, n_q, head_dim = q.shape
        kv_heads, n_k = k.shape[1], k.shape[2]
        dout = _unit_last_stride(dout)
        _check_strides(dout)
        with _on_device(q):
            dq, dk, dv, row_grad_p, row_grad_a = _backward_kernels(
                q, k, v, dout, out_f32, out_std, lse, row_a, row_delta, argmin, argmax, bias_params,
                variant, causal, scale, bias)

        if kv_heads != heads:
            group = heads // kv_heads
            dk = dk.view(batch, kv_heads, group, n_k, head_dim).sum(2).to(q.dtype)
            dv = dv.view(batch, kv_heads, group, n_k, head_dim).sum(2).to(q.dtype)
        grad_p = grad_a = None
        if bias == 2:
            grad_p = row_grad_p.view(batch, heads, n_q).sum(dim=(0, 2))
            grad_a = row_grad_a.view(batch, heads, n_q).sum(dim=(0, 2))
            grad_p, grad_a = grad_p.to(ctx.kerple_dtype), grad_a.to(ctx.kerple_dtype)
        return dq, dk, dv, grad_p, grad_a, None, None, None, None, None, None


def _backward_kernels(q, k, v, dout, out_f32, out_std, lse, row_a, row_delta, argmin, argmax, bias_params,
                      variant, causal, scale, bias):
    """Preprocess, dK/dV and dQ kernels; returns dq, dk, dv (per query head) and Kerple's per-row sums."""
    batch, heads, n_q, head_dim = q.shape
    kv_heads, n_k = k.shape[1], k.shape[2]
    code = VARIANT_CODES[variant]
    block_d = _block_d(head_dim)
    stats = dict(device=q.device, dtype=torch.float32)

    row_d = torch.empty(batch * heads, n_q, **stats)
    if variant == "sa":
        row_ga, row_gb, row_c1, row_c0 = (torch.empty(batch * heads, n_q, **stats) for _ in range(4))
    else:  # not read by these variants' kernels
        row_ga = row_gb = row_c1 = row_c0 = row_d
    sa_backward_preprocess_kernel[launch_grid(triton.cdiv(n_q, PREPROCESS_BLOCK_M), batch, heads)](
        out_f32, out_std, dout, row_a, row_delta, argmin, argmax, row_d, row_ga, row_gb, row_c1, row_c0,
        *_bhn_strides(out_f32), *_bhn_strides(dout), heads, n_q, head_dim,
        VARIANT=code, BLOCK_M=PREPROCESS_BLOCK_M, BLOCK_D=block_d,
    )

    # dK / dV per query head; grouped-query heads are summed by the caller in fp32 (deterministic, no atomics).
    grad_kv_dtype = q.dtype if kv_heads == heads else torch.float32
    dk = torch.empty(batch, heads, n_k, head_dim, device=q.device, dtype=grad_kv_dtype)
    dv = torch.empty_like(dk)
    common = dict(variant=variant, dtype=q.dtype, block_d=block_d, causal=causal, n_q=n_q, n_k=n_k,
                  VARIANT=code, CAUSAL=causal, BIAS=bias, DOT_PRECISION=_dot_precision(q.dtype), BLOCK_D=block_d)
    row_stats = (lse, row_d, row_c1, row_c0, row_ga, row_gb, argmin, argmax)
    launch("dkdv", sa_backward_dkdv_kernel, lambda bm, bn: launch_grid(triton.cdiv(n_k, bn), batch, heads),
           (q, k, v, dout, dk, dv, *row_stats, bias_params,
            *_bhn_strides(q), *_bhn_strides(k), *_bhn_strides(v), *_bhn_strides(dout), *_bhn_strides(dk),
            heads, heads // kv_heads, n_q, n_k, head_dim, scale), **common)

    dq = torch.empty_like(q)
    kerple = bias == 2
    row_grad_p = torch.empty(batch * heads, n_q, **stats) if kerple else row_d
    row_grad_a = torch.empty(batch * heads, n_q, **stats) if kerple else row_d
    launch("dq", sa_backward_dq_kernel, lambda bm, bn: launch_grid(triton.cdiv(n_q, bm), batch, heads),
           (q, k, v, dout, dq, *row_stats, bias_params, row_grad_p, row_grad_a,
            *_bhn_strides(q), *_bhn_strides(k), *_bhn_strides(v), *_bhn_strides(dout), *_bhn_strides(dq),
            heads, heads // kv_heads, n_q, n_k, head_dim, scale), **common)
    return dq, dk, dv, row_grad_p, row_grad_a


def _check_inputs(q, k, v, variant, causal, scale, alibi_slopes, kerple, eps):
    check_inputs(q, k, v, variant, scale, alibi_slopes, kerple, eps, backend="triton")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"triton attention supports {SUPPORTED_DTYPES}, got q.dtype={q.dtype}")
    if q.device.type != "cuda" and not (INTERPRET and q.device.type == "cpu"):
        raise ValueError(f"triton attention needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before "
                         f"importing triton), got device {q.device}")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"triton attention supports head_dim in 1..{MAX_HEAD_DIM}, got {q.shape[-1]}")
    if causal:
        check_causal_lengths(q.shape[2], k.shape[2])


def triton_attention(q, k, v, *, variant="sa", causal=True, scale=None, alibi_slopes=None, kerple=None, eps=1e-6):
    """Fused SA-Softmax / softmax attention; see the module docstring. Returns ``out`` shaped and typed like q."""
    _check_inputs(q, k, v, variant, causal, scale, alibi_slopes, kerple, eps)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    kerple_p, kerple_a = kerple if kerple is not None else (None, None)
    # ALiBi slopes are constants (kernels/bias.py): detached, a slope that requires grad does not make ``out`` require
    # grad (as in eager / chunked), so no backward runs over buffers the forward never filled.
    slopes = None if alibi_slopes is None else alibi_slopes.detach()
    # Decided here, not from ctx.needs_input_grad: that stays True under torch.no_grad() for leaves requiring grad,
    # and inference would then write the backward's statistics for nothing.
    needs_backward = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, kerple_p, kerple_a))
    return _TritonSAAttention.apply(q, k, v, kerple_p, kerple_a, slopes, variant, bool(causal), scale, float(eps),
                                    needs_backward)
