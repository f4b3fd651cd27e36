"""Helpers every attention backend's tests share: seeded inputs, the float64 reference, the tolerance rule.

Tolerance rule (FlashAttention's, DESIGN §7):
``max|got - ref64| <= 2 * max|torch_same_dtype - ref64| + floor`` for the output and every gradient,
where ``torch_same_dtype`` is the eager backend run in the dtype under test.
"""
import torch

from kernels.eager import eager_attention

GRAD_NAMES = ("dq", "dk", "dv", "dp", "da")

# Absolute floor per dtype, scaled by the reference's magnitude (see floor_for). Why fp32 needs 1e-4: a row with
# one visible key and x < 0 has w = 0 identically, so its exact gradient is 0, but the fused backward (DESIGN §6)
# gets it as the difference of two terms of size |dp|/delta, leaving about eps_fp32 * |dp| / delta; eager autograd
# happens to cancel those terms bit for bit, so the 2x-eager part of the rule gives no room there.
BASE_FLOOR = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def make_inputs(batch=1, heads=2, n_q=17, n_k=None, head_dim=16, *, dtype=torch.float32, bias=None, seed=0,
                q_scale=1.0, device="cpu"):
    """Seeded plain tensors (q, k, v, dout, bias parameters). ``bias``: None | "alibi" | "kerple".

    ``q_scale`` grows the logits. Bias parameters stay fp32 (fp64 for fp64 inputs), as model parameters would be.
    """
    n_k = n_q if n_k is None else n_k
    gen = torch.Generator().manual_seed(seed)
    params = torch.float64 if dtype == torch.float64 else torch.float32

    def normal(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)

    inputs = {"q": normal(batch, heads, n_q, head_dim, scale=q_scale), "k": normal(batch, heads, n_k, head_dim),
              "v": normal(batch, heads, n_k, head_dim), "dout": normal(batch, heads, n_q, head_dim),
              "alibi_slopes": None, "kerple": None}
    if bias == "alibi":
        slopes = 2.0 ** (-8.0 * torch.arange(1, heads + 1, dtype=torch.float64) / heads)
        inputs["alibi_slopes"] = slopes.to(params).to(device)
    elif bias == "kerple":
        p = torch.rand(heads, generator=gen, dtype=torch.float64) * 2 + 0.01
        a = torch.rand(heads, generator=gen, dtype=torch.float64) + 0.01
        inputs["kerple"] = (p.to(params).to(device), a.to(params).to(device))
    return inputs


def as_float64(inputs):
    """float64 copies of ``inputs`` (same values)."""
    out = {name: None if t is None else t.double() for name, t in inputs.items() if name != "kerple"}
    out["kerple"] = None if inputs["kerple"] is None else tuple(t.double() for t in inputs["kerple"])
    return out


def outputs_and_grads(attention, inputs, **options):
    """Run ``attention(q, k, v, alibi_slopes=..., kerple=..., **options)``; return out and grads, float64."""
    leaves = {name: inputs[name].detach().clone().requires_grad_() for name in ("q", "k", "v")}
    kerple = None
    if inputs["kerple"] is not None:
        kerple = tuple(t.detach().clone().requires_grad_() for t in inputs["kerple"])
    out = attention(leaves["q"], leaves["k"], leaves["v"], alibi_slopes=inputs["alibi_slopes"], kerple=kerple,
                    **options)
    out.backward(inputs["dout"])
    result = {"out": out.detach(), "dq": leaves["q"].grad, "dk": leaves["k"].grad, "dv": leaves["v"].grad}
    if kerple is not None:
        result["dp"], result["da"] = kerple[0].grad, kerple[1].grad
    return {name: t.double() for name, t in result.items()}


def reference64(inputs, **options):
    """The eager backend in float64: out and grads for q, k, v (and Kerple p, a)."""
    return outputs_and_grads(eager_attention, as_float64(inputs), **options)


def floor_for(dtype, ref64):
    return BASE_FLOOR[dtype] * max(1.0, ref64.abs().max().item() if ref64.numel() else 0.0)


def assert_within_tolerance(name, got, ref64, torch_same_dtype, floor):
    """FlashAttention's rule: the backend's error is at most twice eager's error in the same dtype, plus floor."""
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != reference {tuple(ref64.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    if got.numel() == 0:
        return
    error = (got.double() - ref64).abs().max().item()
    baseline = (torch_same_dtype.double() - ref64).abs().max().item()
    assert error <= 2 * baseline + floor, (
        f"{name}: max|got - ref64| = {error:.3e} > 2 * max|torch_same_dtype - ref64| + floor "
        f"= 2 * {baseline:.3e} + {floor:.1e}")


def assert_backend_matches_reference(attention, inputs, **options):
    """Check ``attention`` against the float64 eager reference under the tolerance rule, out and all grads."""
    ref = reference64(inputs, **options)
    same_dtype = outputs_and_grads(eager_attention, inputs, **options)
    got = outputs_and_grads(attention, inputs, **options)
    dtype = inputs["q"].dtype
    for name in ("out",) + GRAD_NAMES:
        if name in ref:
            assert_within_tolerance(name, got[name], ref[name], same_dtype[name], floor_for(dtype, ref[name]))
