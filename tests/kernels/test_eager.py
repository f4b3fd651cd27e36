"""The eager reference itself: SA semantics against an independent per-row loop, SDPA, and tie routing."""
import pytest
import torch
import torch.nn.functional as F

from kernels.bias import position_bias
from kernels.eager import attention_weights, eager_attention
from tests.kernels.reference import make_inputs

VARIANTS = ("softmax", "sa", "sa_raw")


def per_row_weights(scores, variant, causal, eps):
    """DESIGN §1 written one row at a time in float64: the plainest statement of the method."""
    weights = torch.zeros_like(scores)
    batch, heads, n_q, n_k = scores.shape
    for b in range(batch):
        for h in range(heads):
            for i in range(n_q):
                visible = i + n_k - n_q + 1 if causal else n_k
                x = scores[b, h, i, :visible]
                s = torch.softmax(x, dim=0)
                if variant == "softmax":
                    w = s
                elif variant == "sa_raw":
                    w = x * s
                else:
                    low, high = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
                    w = (x - low) / (high - low + eps) * s
                weights[b, h, i, :visible] = w
    return weights


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("rows", ["mixed", "all_positive", "all_negative"])
@pytest.mark.parametrize("n_q, n_k", [(9, 9), (4, 11)])
def test_weights_match_per_row_definition(variant, causal, rows, n_q, n_k):
    scores = torch.randn(2, 3, n_q, n_k, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    if rows == "all_positive":
        scores = scores.abs() + 0.1
    elif rows == "all_negative":
        scores = -scores.abs() - 0.1
    got = attention_weights(scores, variant=variant, causal=causal, eps=1e-6)
    torch.testing.assert_close(got, per_row_weights(scores, variant, causal, 1e-6), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("bias", [None, "alibi", "kerple"])
def test_softmax_variant_equals_sdpa(causal, bias):
    inputs = make_inputs(2, 4, 33, head_dim=16, dtype=torch.float64, bias=bias)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    mask = position_bias(33, 33, 4, inputs["alibi_slopes"], inputs["kerple"], dtype=torch.float64, device="cpu")
    if causal:
        hidden = torch.ones(33, 33, dtype=torch.bool).triu(1)
        mask = torch.zeros(4, 33, 33, dtype=torch.float64) if mask is None else mask
        mask = mask.masked_fill(hidden, float("-inf"))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = eager_attention(q, k, v, variant="softmax", causal=causal, alibi_slopes=inputs["alibi_slopes"],
                          kerple=inputs["kerple"])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_first_causal_row_with_negative_score_is_exactly_zero():
    inputs = make_inputs(1, 2, 8, head_dim=16)
    q, k = inputs["q"], inputs["k"].clone()
    k[:, :, 0] = -q[:, :, 0]  # x_00 = -|q_0|^2 * scale < 0
    out = eager_attention(q, k, inputs["v"], variant="sa", causal=True)
    assert torch.equal(out[:, :, 0], torch.zeros_like(out[:, :, 0]))


def _score_grad(scores, cotangent):
    scores = scores.clone().requires_grad_()
    (attention_weights(scores, variant="sa", causal=False, eps=1e-6) * cotangent).sum().backward()
    return scores.grad


@pytest.mark.parametrize("extreme", ["min", "max"])
def test_tied_extremes_route_gradient_to_first_index(extreme):
    """With a tie, the gradient equals the one where the first tied index is the strict extreme."""
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(1, 1, 1, 6, generator=gen, dtype=torch.float64)
    cotangent = torch.randn(1, 1, 1, 6, generator=gen, dtype=torch.float64)
    value = -4.0 if extreme == "min" else 4.0
    scores[..., 1] = scores[..., 4] = value
    nudge = torch.zeros_like(scores)
    nudge[..., 4] = 1e-9 if extreme == "min" else -1e-9  # index 1 becomes the strict extreme
    first_wins = _score_grad(scores + nudge, cotangent)
    second_wins = _score_grad(scores - nudge, cotangent)
    tied = _score_grad(scores, cotangent)
    torch.testing.assert_close(tied, first_wins, rtol=0, atol=1e-7)
    assert (tied - second_wins).abs().max() > 1e-3


def test_gradcheck_with_kerple():
    inputs = make_inputs(1, 2, 5, head_dim=4, dtype=torch.float64, bias="kerple")
    leaves = [inputs[name].clone().requires_grad_() for name in ("q", "k", "v")]
    p, a = (t.clone().requires_grad_() for t in inputs["kerple"])

    def attention(q, k, v, p, a):
        return eager_attention(q, k, v, variant="sa", causal=True, kerple=(p, a))
    assert torch.autograd.gradcheck(attention, (*leaves, p, a))


def test_zero_queries_give_finite_output_and_grads():
    inputs = make_inputs(1, 2, 16, head_dim=16)
    q = torch.zeros_like(inputs["q"]).requires_grad_()
    out = eager_attention(q, inputs["k"], inputs["v"], variant="sa", causal=True)
    out.backward(inputs["dout"])
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all()
