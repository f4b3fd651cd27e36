"""The fused Triton SA-Softmax kernels (forward + backward) against the float64 eager reference.

Without CUDA the kernels run in the Triton interpreter on CPU tensors: ``TRITON_INTERPRET=1`` must be set before
triton is first imported, hence the top of this module. Interpreter runs use fp32/fp16 (bf16 ``tl.dot`` is wrong
there); bf16 is checked on a real GPU (``gpu`` marker).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed (it has wheels for Linux only)")

from kernels import triton_common  # noqa: E402
from kernels.triton_attention import triton_attention  # noqa: E402
from tests.kernels.reference import (assert_backend_matches_reference, make_inputs, outputs_and_grads,  # noqa: E402
                                     reference64)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not triton_common.INTERPRET:
    raise RuntimeError("kernels.triton_* was imported before TRITON_INTERPRET=1 was set; on a machine without CUDA "
                       "set it before anything imports triton (e.g. in a conftest.py)")

VARIANTS = ("softmax", "sa", "sa_raw")
BIASES = (None, "alibi", "kerple")


def check(inputs, **options):
    assert_backend_matches_reference(triton_attention, inputs, **options)


def inputs_on_device(**kwargs):
    return make_inputs(device=DEVICE, **kwargs)


# ---- sweeps ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", BIASES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_small_matches_reference(variant, causal, bias):
    check(inputs_on_device(n_q=17, head_dim=16, bias=bias), variant=variant, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant, bias, n, head_dim", [
    ("sa", None, 97, 64), ("sa", "kerple", 129, 64), ("softmax", "alibi", 113, 64), ("sa_raw", "kerple", 97, 64),
])
def test_multi_tile_matches_reference(variant, bias, n, head_dim, causal):
    check(inputs_on_device(n_q=n, head_dim=head_dim, bias=bias), variant=variant, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fp16_matches_reference(variant, causal):
    check(inputs_on_device(n_q=113, head_dim=128, bias="kerple", dtype=torch.float16), variant=variant,
          causal=causal)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_single_token(variant, causal):
    check(inputs_on_device(n_q=1, head_dim=16, bias="kerple"), variant=variant, causal=causal)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n", [1, 17, 97, 113, 128, 129, 255])
def test_length_sweep(n, variant, causal, dtype):
    # Head dims and biases rotate with the length so every combination of each shows up somewhere.
    head_dim = (16, 64, 128)[n % 3]
    bias = BIASES[(n + VARIANTS.index(variant)) % 3]
    check(inputs_on_device(n_q=n, head_dim=head_dim, bias=bias, dtype=dtype, seed=n), variant=variant,
          causal=causal)


# ---- shapes beyond the basic layout -----------------------------------------------------------------------------

@pytest.mark.parametrize("head_dim", [8, 24, pytest.param(256, marks=pytest.mark.slow)])
def test_head_dim_padded_to_power_of_two(head_dim):
    check(inputs_on_device(n_q=33, head_dim=head_dim, bias="alibi"), variant="sa", causal=True)


@pytest.mark.parametrize("causal", [False, True])
def test_fewer_queries_than_keys(causal):
    # Queries align to the end of the keys (kernels/eager.py).
    check(inputs_on_device(n_q=20, n_k=45, head_dim=16, bias="kerple"), variant="sa", causal=causal)


def test_more_queries_than_keys_non_causal():
    check(inputs_on_device(n_q=45, n_k=20, head_dim=16, bias="alibi"), variant="sa", causal=False)


def test_grouped_query_attention_matches_repeated_kv():
    inputs = inputs_on_device(batch=2, heads=4, n_q=40, head_dim=16)
    kv_heads = 2
    q, dout = inputs["q"], inputs["dout"]
    k, v = inputs["k"][:, :kv_heads].clone(), inputs["v"][:, :kv_heads].clone()
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = triton_attention(*leaves, variant="sa", causal=True)
    out.backward(dout)
    repeated = dict(inputs, k=k.repeat_interleave(2, dim=1), v=v.repeat_interleave(2, dim=1))
    ref = reference64(repeated, variant="sa", causal=True)
    ref_dk = ref["dk"].view(2, kv_heads, 2, 40, 16).sum(2)
    ref_dv = ref["dv"].view(2, kv_heads, 2, 40, 16).sum(2)
    for got, want in ((out, ref["out"]), (leaves[0].grad, ref["dq"]), (leaves[1].grad, ref_dk),
                      (leaves[2].grad, ref_dv)):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


def test_strided_inputs():
    inputs = inputs_on_device(n_q=30, head_dim=16, bias="kerple")
    # (B, N, H, D) storage viewed as (B, H, N, D), as a fused QKV projection produces (read in place), and a v
    # whose last dimension is strided (copied).
    for name in ("q", "k", "dout"):
        inputs[name] = inputs[name].transpose(1, 2).contiguous().transpose(1, 2)
        assert not inputs[name].is_contiguous()
    inputs["v"] = torch.stack([inputs["v"], inputs["v"]], dim=-1)[..., 0]
    assert inputs["v"].stride(-1) == 2
    check(inputs, variant="sa", causal=True)


def test_batch_and_heads():
    check(inputs_on_device(batch=2, heads=3, n_q=40, head_dim=32, bias="alibi"), variant="sa", causal=True)


# ---- special inputs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_large_logits(variant):
    check(inputs_on_device(n_q=70, head_dim=32, q_scale=30.0), variant=variant, causal=True)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("causal", [False, True])
def test_all_positive_or_all_negative_rows(sign, causal):
    # q, k > 0 gives only positive scores (a = 0, no gradient through the min); k < 0 only negative ones (b = 0).
    inputs = inputs_on_device(n_q=50, head_dim=16)
    inputs["q"] = inputs["q"].abs() + 0.1
    inputs["k"] = sign * (inputs["k"].abs() + 0.1)
    check(inputs, variant="sa", causal=causal)


def test_first_causal_row_negative_is_exactly_zero():
    inputs = inputs_on_device(n_q=40, head_dim=16)
    inputs["k"] = -(inputs["q"].abs() + 0.1)
    inputs["q"] = inputs["q"].abs() + 0.1
    out = triton_attention(inputs["q"], inputs["k"], inputs["v"], variant="sa", causal=True)
    assert torch.equal(out[:, :, 0], torch.zeros_like(out[:, :, 0]))
    check(inputs, variant="sa", causal=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_queries_are_nan_free(variant):
    inputs = inputs_on_device(n_q=37, head_dim=16, bias="kerple")
    inputs["q"] = torch.zeros_like(inputs["q"])
    got = outputs_and_grads(triton_attention, inputs, variant=variant, causal=True)
    assert all(torch.isfinite(t).all() for t in got.values())
    check(inputs, variant=variant, causal=True)


@pytest.mark.parametrize("bias", [None, "alibi"])
@pytest.mark.parametrize("causal", [False, True])
def test_ties_route_to_first_extreme(causal, bias):
    # Integer q and keys drawn from a pool of 4 distinct keys: every score is exact and each row's max and min are
    # attained by many keys, within one key tile and across tiles (with ALiBi, at equal distances on both sides when
    # non-causal). The gradient through a and b must go to the first of them, as in the eager reference.
    inputs = inputs_on_device(n_q=70, head_dim=16, bias=bias)
    gen = torch.Generator().manual_seed(1)
    q, k = inputs["q"], inputs["k"]
    pool = torch.randint(-1, 2, (4, k.shape[-1]), generator=gen)
    inputs["q"] = torch.randint(-1, 2, q.shape, generator=gen).to(q)
    inputs["k"] = pool[torch.randint(0, 4, k.shape[:-1], generator=gen)].to(k)
    if bias is None:
        scores = inputs["q"] @ inputs["k"].transpose(-2, -1)
        for extreme in (scores.amax(-1, keepdim=True), scores.amin(-1, keepdim=True)):
            assert ((scores == extreme).sum(-1) > 1).float().mean() > 0.9
    check(inputs, variant="sa", causal=causal)


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_without_grad_matches_training_forward(variant):
    # Without a backward to follow, the forward skips saving its statistics; the output must not change.
    inputs = inputs_on_device(n_q=40, head_dim=16, bias="alibi", dtype=torch.float16)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    leaf = q.clone().requires_grad_()
    with torch.no_grad():  # a leaf requiring grad, as in a benchmark's or an eval's forward: still no backward
        inference = triton_attention(leaf, k, v, variant=variant, causal=True)
    training = triton_attention(leaf, k, v, variant=variant, causal=True)
    assert not inference.requires_grad and training.requires_grad
    assert torch.equal(inference, training.detach())


def test_alibi_slopes_are_constants():
    # As in eager / chunked: a slope that requires grad gets none and alone does not make out differentiable.
    inputs = inputs_on_device(n_q=8, head_dim=16, bias="alibi")
    slopes = inputs["alibi_slopes"].clone().requires_grad_()
    out = triton_attention(inputs["q"], inputs["k"], inputs["v"], alibi_slopes=slopes)
    assert not out.requires_grad


def test_backward_is_deterministic():
    inputs = inputs_on_device(n_q=50, head_dim=16, bias="kerple")
    first = outputs_and_grads(triton_attention, inputs, variant="sa", causal=True)
    second = outputs_and_grads(triton_attention, inputs, variant="sa", causal=True)
    for name in first:
        assert torch.equal(first[name], second[name]), name


# ---- input validation -------------------------------------------------------------------------------------------

def test_rejects_bad_inputs():
    inputs = inputs_on_device(n_q=8, head_dim=16)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    with pytest.raises(ValueError, match="variant"):
        triton_attention(q, k, v, variant="relu")
    with pytest.raises(ValueError, match="must divide the query heads"):
        triton_attention(q, k[:, :1].expand(1, 3, 8, 16), v[:, :1].expand(1, 3, 8, 16))
    with pytest.raises(ValueError, match="must share one dtype"):
        triton_attention(q, k.half(), v)
    with pytest.raises(ValueError, match="n_q <= n_k"):
        triton_attention(q, k[:, :, :4], v[:, :, :4], causal=True)
    with pytest.raises(ValueError, match="head_dim"):
        big = torch.zeros(1, 2, 8, 512, device=DEVICE)
        triton_attention(big, big, big)
    with pytest.raises(ValueError, match="dtype"):
        triton_attention(q.double(), k.double(), v.double())


# ---- real GPU ---------------------------------------------------------------------------------------------------

GPU_SHAPES = ((255, 64, "kerple"), (1000, 128, "alibi"), (129, 256, None))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_on_gpu(variant, causal):
    # One shape per case (each new shape autotunes three kernels); together they cover head dims 64/128/256.
    n, head_dim, bias = GPU_SHAPES[(VARIANTS.index(variant) + causal) % len(GPU_SHAPES)]
    check(inputs_on_device(batch=2, heads=4, n_q=n, head_dim=head_dim, bias=bias, dtype=torch.bfloat16),
          variant=variant, causal=causal)
