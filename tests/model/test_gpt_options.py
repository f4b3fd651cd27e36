"""Every option combination builds, runs forward and backward, and gives finite logits of the right shape."""
import itertools

import pytest
import torch

from sa_megatron.model import build_model, language_model_loss
from sa_megatron.model.position import alibi_slopes
from tests.model.tiny import VOCAB, random_tokens, tiny_config

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
TIES = (True, False)
POSITIONS = ("learned", "rope", "alibi", "kerple", "none", "dapev2-kerple")
VARIANTS = ("softmax", "sa", "sa_raw")


@pytest.mark.parametrize("norm,mlp,tie,position,variant",
                         list(itertools.product(NORMS, MLPS, TIES, POSITIONS, VARIANTS)))
def test_forward_backward_shapes(norm, mlp, tie, position, variant):
    torch.manual_seed(0)
    config = tiny_config(num_layers=1, norm=norm, mlp=mlp, tie_embeddings=tie, position_encoding=position,
                         attention=variant, attention_backend="auto")
    model = build_model(config, VOCAB)
    tokens = random_tokens(batch=2, seq=16)
    logits = model(tokens)
    assert logits.shape == (2, 16, VOCAB)
    language_model_loss(logits[:, :-1], tokens[:, 1:]).backward()
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_alibi_slopes_follow_the_geometric_sequence():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))
    # Not a power of two: the 4-head sequence, then every other slope of the 8-head one.
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2.0 ** -i for i in (2, 4, 6, 8, 1, 3)]))


@pytest.mark.parametrize("position", ("rope", "kerple", "dapev2-kerple"))
def test_bf16_model_gives_fp32_loss_and_finite_grads(position):
    torch.manual_seed(0)
    model = build_model(tiny_config(position_encoding=position), VOCAB).to(torch.bfloat16)
    tokens = random_tokens()
    logits = model(tokens)
    loss = language_model_loss(logits[:, :-1], tokens[:, 1:])
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
