"""The tensor-parallel layers at one rank are exactly nn.Linear / nn.Embedding / cross-entropy math."""
import torch
import torch.nn.functional as F

from sa_megatron.parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    tensor_parallel_group,
    tensor_parallel_rank,
    tensor_parallel_world_size,
    vocab_parallel_cross_entropy,
)


def normal(tensor):
    return torch.nn.init.normal_(tensor)


def test_state_is_a_single_rank_until_a_group_is_set():
    assert (tensor_parallel_group(), tensor_parallel_rank(), tensor_parallel_world_size()) == (None, 0, 1)


def test_column_and_row_parallel_linear_are_plain_linear():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8)
    column = ColumnParallelLinear(8, 12, bias=True, init_method=normal, gather_output=True)
    row = RowParallelLinear(12, 8, bias=True, init_method=normal)
    torch.nn.init.normal_(column.bias)
    torch.nn.init.normal_(row.bias)
    assert column.weight.shape == (12, 8) and row.weight.shape == (8, 12)
    hidden = column(x)
    torch.testing.assert_close(hidden, x @ column.weight.T + column.bias, rtol=0, atol=0)
    torch.testing.assert_close(row(hidden), hidden @ row.weight.T + row.bias, rtol=0, atol=0)
    assert RowParallelLinear(12, 8, bias=False, init_method=normal).bias is None


def test_vocab_parallel_embedding_is_plain_embedding():
    torch.manual_seed(0)
    embedding = VocabParallelEmbedding(10, 4, init_method=normal)
    tokens = torch.tensor([[0, 9, 3], [3, 3, 1]])
    torch.testing.assert_close(embedding(tokens), F.embedding(tokens, embedding.weight), rtol=0, atol=0)


def test_vocab_parallel_cross_entropy_matches_torch_in_fp32():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (2, 7))
    loss = vocab_parallel_cross_entropy(logits, labels)
    expected = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    weights = torch.rand(2, 7)
    (grad,) = torch.autograd.grad((loss * weights).sum(), logits)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-7)


def test_vocab_parallel_cross_entropy_is_fp32_for_bf16_logits():
    logits = torch.randn(4, 9).to(torch.bfloat16).requires_grad_()
    loss = vocab_parallel_cross_entropy(logits, torch.randint(0, 9, (4,)))
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
