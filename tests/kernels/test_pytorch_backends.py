"""The PyTorch backends with a hand-written backward (chunked: online over key tiles; dense: whole rows a block of
queries at a time) against the float64 eager reference under FlashAttention's tolerance rule."""
import itertools
from functools import partial

import pytest
import torch

from kernels.chunked import chunked_attention
from kernels.dense import dense_attention
from kernels.eager import eager_attention
from tests.kernels.reference import assert_backend_matches_reference, make_inputs, outputs_and_grads

LENGTHS = (1, 17, 97, 113, 128, 129, 255)
HEAD_DIMS = (16, 64, 128)
BIASES = (None, "alibi", "kerple")
VARIANTS = ("softmax", "sa", "sa_raw")
DTYPES = (torch.float32, torch.float16)

# A representative subset: every length, head dim, bias, variant and dtype appears, with causal both ways.
QUICK_CASES = [
    (1, 16, True, None, "sa", torch.float32),
    (17, 16, False, "alibi", "sa", torch.float16),
    (97, 64, True, "kerple", "sa", torch.float32),
    (113, 16, True, "alibi", "sa_raw", torch.float32),
    (128, 128, False, "kerple", "softmax", torch.float16),
    (129, 16, True, None, "sa", torch.float16),
    (255, 64, True, "kerple", "sa", torch.float16),
    (255, 16, False, None, "sa_raw", torch.float16),
]
FULL_CASES = list(itertools.product(LENGTHS, HEAD_DIMS, (True, False), BIASES, VARIANTS, DTYPES))
IMPLEMENTATIONS = ("chunked", "dense")


def tiled(implementation, size):
    """The backend with `size` keys per tile (chunked) or query rows per block (dense)."""
    if implementation == "chunked":
        return partial(chunked_attention, chunk_size=size)
    return partial(dense_attention, block_rows=size)


def check(implementation, length, head_dim, causal, bias, variant, dtype, size=64, **input_options):
    inputs = make_inputs(2, 2, length, head_dim=head_dim, dtype=dtype, bias=bias, **input_options)
    assert_backend_matches_reference(tiled(implementation, size), inputs, variant=variant, causal=causal)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("length, head_dim, causal, bias, variant, dtype", QUICK_CASES)
def test_matches_reference(implementation, length, head_dim, causal, bias, variant, dtype):
    check(implementation, length, head_dim, causal, bias, variant, dtype)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.slow
@pytest.mark.parametrize("length, head_dim, causal, bias, variant, dtype", FULL_CASES)
def test_matches_reference_full_sweep(implementation, length, head_dim, causal, bias, variant, dtype):
    check(implementation, length, head_dim, causal, bias, variant, dtype)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_logits(implementation, variant, dtype):
    check(implementation, 113, 32, True, "alibi", variant, dtype, q_scale=30.0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("n_q, n_k, causal", [(17, 97, True), (97, 40, False), (64, 129, True)])
def test_queries_align_to_end_of_keys(implementation, n_q, n_k, causal):
    inputs = make_inputs(1, 2, n_q, n_k, head_dim=16, bias="kerple")
    assert_backend_matches_reference(tiled(implementation, 32), inputs, variant="sa", causal=causal)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("causal", [True, False])
def test_rows_of_one_sign(implementation, sign, causal):
    """All-positive rows have a = 0; all-negative rows have b = 0 (no gradient through max)."""
    inputs = make_inputs(1, 2, 97, head_dim=16)
    inputs["q"], inputs["k"] = inputs["q"].abs(), sign * inputs["k"].abs()
    assert_backend_matches_reference(tiled(implementation, 32), inputs, variant="sa", causal=causal)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_zero_queries_are_nan_free(implementation):
    inputs = make_inputs(1, 2, 97, head_dim=16)
    inputs["q"] = torch.zeros_like(inputs["q"])
    got = outputs_and_grads(tiled(implementation, 32), inputs, variant="sa", causal=True)
    assert all(torch.isfinite(t).all() for t in got.values())


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_first_causal_row_with_negative_score_is_exactly_zero(implementation):
    inputs = make_inputs(1, 2, 40, head_dim=16)
    inputs["k"][:, :, 0] = -inputs["q"][:, :, 0]
    out = tiled(implementation, 16)(inputs["q"], inputs["k"], inputs["v"], variant="sa", causal=True)
    assert torch.equal(out[:, :, 0], torch.zeros_like(out[:, :, 0]))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck(implementation, variant, causal):
    """float64 finite differences through the custom backward, tiles of 2 so every row spans several tiles."""
    inputs = make_inputs(1, 2, 5, head_dim=4, dtype=torch.float64, bias="kerple")
    leaves = [inputs[name].clone().requires_grad_() for name in ("q", "k", "v")]
    p, a = (t.clone().requires_grad_() for t in inputs["kerple"])

    def attention(q, k, v, p, a):
        return tiled(implementation, 2)(q, k, v, variant=variant, causal=causal, kerple=(p, a))
    assert torch.autograd.gradcheck(attention, (*leaves, p, a))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("tied", ["min", "max"])
def test_ties_across_tiles_route_to_first_index(implementation, tied):
    """Duplicated keys give exactly tied scores in different tiles; grads must match eager's first-index rule."""
    inputs = make_inputs(1, 1, 12, head_dim=8, dtype=torch.float64)
    q, k = inputs["q"], inputs["k"]
    q[:] = q[:, :, :1]  # one query repeated: every row sees the same scores
    sign = -1.0 if tied == "min" else 1.0
    k[:, :, 2] = k[:, :, 9] = sign * 4.0 * q[0, 0, 0] / q[0, 0, 0].norm()
    scores = (q[0, 0, 0] @ k[0, 0].T) * sign
    assert scores.argmax() == 2 and scores[9] == scores[2]
    ref = outputs_and_grads(eager_attention, inputs, variant="sa", causal=False)
    got = outputs_and_grads(tiled(implementation, 4), inputs, variant="sa", causal=False)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-10, atol=1e-10)
