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

from kernels import triton_common, tuned_configs  # noqa: E402
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


# ---- loop structure: split key loops, lazy rescale, one-hot skip ------------------------------------------------

INTERPRET_BLOCKS = (tuned_configs.INTERPRET_CONFIG.block_m, tuned_configs.INTERPRET_CONFIG.block_n)


@pytest.mark.parametrize("variant, causal, n_q, n_k", [
    ("sa", False, 64, 64),   # EVEN_N: only unmasked tiles
    ("sa", True, 64, 64),    # EVEN_N causal: unmasked tiles below the diagonal, masked diagonal tiles
    ("sa", False, 20, 50),   # N_K % BLOCK_N != 0: masked partial last key tile, partial query block
    ("sa", True, 40, 57),    # causal, queries aligned to the end of the keys, partial tiles on both axes
    ("softmax", True, 40, 57), ("sa_raw", False, 20, 50),
])
def test_split_key_loops(variant, causal, n_q, n_k):
    if DEVICE == "cpu":  # the shapes above are chosen against the interpreter's tiles
        assert (n_k % INTERPRET_BLOCKS[1] == 0) == (n_q % INTERPRET_BLOCKS[0] == 0) == (n_k == 64)
    check(inputs_on_device(n_q=n_q, n_k=n_k, head_dim=16, bias="kerple", seed=n_k), variant=variant, causal=causal)


@pytest.mark.parametrize("variant, growth, causal", [
    ("sa", 0.05, True), ("sa", 0.6, True), ("sa", 0.6, False), ("softmax", 0.6, True), ("sa_raw", 0.05, False),
])
def test_lazy_rescale_with_growing_row_maxima(variant, growth, causal):
    # Scores x_ij ≈ growth · j + noise: every row's max grows along the keys, by less than the rescale threshold
    # (2^3) per 16-key tile (0.05: 0.8 per tile, the reference max moves rarely and exponentials above 1 accumulate)
    # or by more (0.6: 9.6 per tile, it moves on every tile).
    n = 50
    inputs = inputs_on_device(n_q=n, head_dim=16, seed=3)
    direction = torch.ones(16, dtype=torch.float64) / 4.0  # |direction|² · 4 (the scale is 1/4) = 1
    q = direction.expand(1, 2, n, 16) + 0.05 * inputs["q"].double().cpu()
    k = growth * torch.arange(n, dtype=torch.float64)[:, None] * direction * 4 + 0.3 * inputs["k"].double().cpu()
    inputs["q"], inputs["k"] = q.float().to(DEVICE), k.float().to(DEVICE)
    x = (q @ k.transpose(-2, -1)) / 4
    assert (x[..., -1] - x[..., 0]).min() > (n - 1) * growth * 0.8  # the maxima do grow along the keys
    check(inputs, variant=variant, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
def test_one_hot_terms_only_on_tiles_holding_argmin_or_argmax(causal):
    # Every row's argmax is key 40 and (non-causal) argmin key 5, so most key tiles hold neither and skip the one-hot
    # terms; the gradients through a and b must still reach those two keys.
    inputs = inputs_on_device(n_q=60, head_dim=16, seed=4)
    q, k = inputs["q"].abs() + 0.5, inputs["k"].clone() * 0.1
    k[:, :, 40] = q.mean(2) * 3.0
    k[:, :, 5] = -q.mean(2) * 3.0
    inputs["q"], inputs["k"] = q, k
    x = q.double() @ k.double().transpose(-2, -1)
    if not causal:
        assert (x.argmax(-1) == 40).all() and (x.argmin(-1) == 5).all()
    check(inputs, variant="sa", causal=causal)


# ---- configs: fixed, never autotuned in tests -------------------------------------------------------------------

def test_launches_use_the_fixed_config_and_never_autotune():
    tuned_configs.LAST_LAUNCH.clear()
    check(inputs_on_device(n_q=33, head_dim=16, bias="alibi"), variant="sa", causal=True)
    assert set(tuned_configs.LAST_LAUNCH) == {"forward", "dkdv", "dq"}
    for launch in tuned_configs.LAST_LAUNCH.values():
        assert not launch["autotuned"]
        expected = tuned_configs.INTERPRET_CONFIG if DEVICE == "cpu" else launch["config"]
        assert launch["config"] == expected
    assert not tuned_configs._AUTOTUNERS


# ---- launch limits ----------------------------------------------------------------------------------------------

def test_grid_folds_batch_and_heads_onto_two_axes():
    assert triton_common.launch_grid(3, 65_535, 65_535) == (3, 65_535, 65_535)  # B·H ≈ 4.3e9 programs on y·z
    with pytest.raises(ValueError, match="heads .* and batch .* must each be at most 65535"):
        triton_common.launch_grid(3, 65_536, 1)
    with pytest.raises(ValueError, match="heads .* and batch .* must each be at most 65535"):
        triton_common.launch_grid(3, 1, 65_536)


def test_row_stride_guard_at_the_int32_boundary():
    triton_common.check_row_strides(256, (2**31 - 1) // 256)
    with pytest.raises(ValueError, match="overflows int32"):
        triton_common.check_row_strides(256, (2**31 - 1) // 256 + 1)


def test_tile_offsets_are_int64_past_two_to_the_31():
    # The fused-QKV layout reads row i at i · 3·H·D: at N = 2^20 rows of stride 3·2^12 that is 3·2^32, past int32.
    import triton
    import triton.language as tl

    @triton.jit
    def offsets_kernel(Out, start, stride):
        tl.store(Out, triton_common.tile_offset(start, stride))

    out = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    offsets_kernel[(1,)](out, 2**20, 3 * 2**12)
    assert out.item() == 3 * 2**32


def test_batch_heads_grid_decodes_every_slice():
    # (batch 3, heads 5) on grid axes (heads, batch): every (b, h) slice must come out right, not only b = 0.
    check(inputs_on_device(batch=3, heads=5, n_q=18, head_dim=16, bias="kerple"), variant="sa", causal=True)
