"""sa_attention: backend dispatch, grouped-query attention, and clear errors for bad input."""
import os
import subprocess
import sys

import pytest
import torch

from kernels import sa_attention
from kernels.chunked import chunked_attention
from kernels.dense import dense_attention
from kernels.eager import eager_attention
from tests.kernels.reference import make_inputs, outputs_and_grads


def qkv(n=17, heads=4, kv_heads=4, head_dim=16, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, n, head_dim, generator=gen).to(dtype)
    k = torch.randn(2, kv_heads, n, head_dim, generator=gen).to(dtype)
    v = torch.randn(2, kv_heads, n, head_dim, generator=gen).to(dtype)
    return q, k, v


@pytest.mark.parametrize("n, expected", [(17, dense_attention), (512, dense_attention), (513, chunked_attention)])
def test_auto_picks_dense_for_short_and_chunked_for_long_on_cpu(n, expected):
    q, k, v = qkv(n)
    torch.testing.assert_close(sa_attention(q, k, v), expected(q, k, v), rtol=0, atol=0)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("n_q, n_k, kv_heads", [(33, 33, 4), (17, 40, 4), (33, 33, 2)])
def test_auto_runs_softmax_through_sdpa_like_the_float64_reference(causal, alibi, n_q, n_k, kv_heads):
    if not causal and n_q != n_k:
        pytest.skip("the non-causal case does not depend on the alignment")
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, n_q, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, kv_heads, n_k, 16, generator=gen, dtype=torch.float64, requires_grad=True) for _ in "kv")
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.float64) if alibi else None
    grads = []
    for backend in ("auto", "eager"):
        out = sa_attention(q, k, v, variant="softmax", causal=causal, alibi_slopes=slopes, backend=backend)
        grads.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_sdpa_backend_refuses_what_it_does_not_compute():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="backend='sdpa' runs softmax attention without a Kerple bias only"):
        sa_attention(q, k, v, variant="sa", backend="sdpa")


@pytest.mark.parametrize("backend", ["dense", "eager", "chunked"])
def test_named_backend_is_used(backend):
    q, k, v = qkv(40)
    reference = {"dense": dense_attention, "eager": eager_attention, "chunked": chunked_attention}[backend]
    got = sa_attention(q, k, v, variant="sa_raw", causal=False, backend=backend)
    torch.testing.assert_close(got, reference(q, k, v, variant="sa_raw", causal=False), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["dense", "eager", "chunked"])
def test_grouped_query_attention_equals_repeated_heads(backend):
    inputs = make_inputs(2, 4, 33, head_dim=16, bias="kerple")
    for name in ("k", "v"):
        inputs[name] = inputs[name][:, :2].contiguous()

    def repeated(q, k, v, **options):
        return eager_attention(q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), **options)
    got = outputs_and_grads(lambda q, k, v, **o: sa_attention(q, k, v, backend=backend, **o), inputs, variant="sa")
    expected = outputs_and_grads(repeated, inputs, variant="sa")
    assert got["dk"].shape == inputs["k"].shape
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["dense", "eager", "chunked"])
def test_alibi_slopes_get_no_gradient(backend):
    q, k, v = qkv()
    q.requires_grad_()
    slopes = torch.ones(4, requires_grad=True)
    sa_attention(q, k, v, alibi_slopes=slopes, backend=backend).sum().backward()
    assert slopes.grad is None and q.grad is not None


def _bad(**overrides):
    q, k, v = qkv()
    args = dict(q=q, k=k, v=v)
    args.update(overrides)
    return args


BAD_INPUTS = [
    (_bad(variant="sparse"), "variant must be one of"),
    (_bad(backend="cuda"), "backend must be one of"),
    (_bad(q=torch.zeros(2, 4, 17)), "q must be a 4-D tensor"),
    (_bad(k=[1, 2]), "k must be a 4-D tensor"),
    (_bad(v=torch.zeros(2, 4, 17, 16, dtype=torch.int64)), "v.dtype must be one of"),
    (_bad(k=torch.zeros(2, 4, 17, 16, dtype=torch.float64)), "must share one dtype"),
    (_bad(v=torch.zeros(2, 4, 9, 16)), "k and v must have the same shape"),
    (_bad(k=torch.zeros(3, 4, 17, 16), v=torch.zeros(3, 4, 17, 16)), "batch=2"),
    (_bad(k=torch.zeros(2, 4, 17, 8), v=torch.zeros(2, 4, 17, 8)), "head_dim=16"),
    (_bad(k=torch.zeros(2, 3, 17, 16), v=torch.zeros(2, 3, 17, 16)), "must divide the query heads"),
    (_bad(k=torch.zeros(2, 4, 0, 16), v=torch.zeros(2, 4, 0, 16)), "sequence lengths"),
    (_bad(k=torch.zeros(2, 4, 5, 16), v=torch.zeros(2, 4, 5, 16)), "causal attention needs n_q <= n_k"),
    (_bad(scale=-1.0), "scale must be a positive"),
    (_bad(eps=0.0), "eps must be a positive"),
    (_bad(alibi_slopes=torch.ones(3)), r"alibi_slopes must be a \(4,\) tensor"),
    (_bad(alibi_slopes=torch.ones(4, dtype=torch.int64)), "alibi_slopes must be a floating tensor"),
    (_bad(kerple=torch.ones(2, 4)), "kerple must be a pair"),
    (_bad(kerple=(torch.ones(4), torch.ones(5))), r"kerple a must be a \(4,\) tensor"),
    (_bad(alibi_slopes=torch.ones(4), kerple=(torch.ones(4), torch.ones(4))), "at most one of"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_names_the_problem(args, message):
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(ValueError, match=message):
        sa_attention(q, k, v, **args)


def test_triton_on_cpu_without_interpreter_is_a_clear_error():
    # A fresh interpreter: whether TRITON_INTERPRET is on is fixed when kernels.triton_* is first imported,
    # and other test modules in this process import them with it on.
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = (
        "import torch\nfrom kernels import sa_attention\nq = torch.randn(1, 2, 8, 16)\n"
        "try:\n    sa_attention(q, q, q, backend='triton')\nexcept ValueError as err:\n    print(err)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert "TRITON_INTERPRET=1" in result.stdout, result.stdout + result.stderr
