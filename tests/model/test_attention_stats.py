"""The trainer's attention observability: mean attention row mass and q/k gradient norms."""
import pytest
import torch

from kernels.eager import attention_weights
from sa_megatron.model import build_model, language_model_loss
from tests.model.tiny import VOCAB, random_tokens, tiny_config


def test_row_mass_is_one_for_softmax_and_below_one_for_sa():
    tokens = random_tokens()
    torch.manual_seed(0)
    softmax = build_model(tiny_config(attention="softmax"), VOCAB)
    torch.manual_seed(0)
    sa = build_model(tiny_config(attention="sa", attention_backend="chunked"), VOCAB)
    assert softmax.attention_row_mass(tokens) == pytest.approx([1.0, 1.0], abs=1e-6)
    masses = sa.attention_row_mass(tokens)
    assert len(masses) == 2 and all(0 < mass < 1 for mass in masses)


def test_row_mass_equals_the_mean_row_sum_of_the_weights():
    torch.manual_seed(0)
    model = build_model(tiny_config(attention="sa", position_encoding="rope"), VOCAB)
    tokens = random_tokens()
    captured = []
    attention = model.blocks[0].attention
    attention.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    mass = model.attention_row_mass(tokens)[0]
    batch, seq, _ = captured[0].shape
    with torch.no_grad():
        qkv = attention.qkv(captured[0]).view(batch, seq, 4, 3, 8)  # the documented (heads, 3, head_dim) layout
        q, k = attention.rotary(qkv[:, :, :, 0].transpose(1, 2), qkv[:, :, :, 1].transpose(1, 2))
    weights = attention_weights(q @ k.transpose(-1, -2) * attention.scale, variant="sa", causal=True, eps=1e-6)
    assert mass == pytest.approx(weights.sum(-1).mean().item(), rel=1e-5)


def test_row_mass_leaves_the_model_as_it_was():
    model = build_model(tiny_config(hidden_dropout=0.1), VOCAB)
    model.train()
    model.attention_row_mass(random_tokens())
    assert model.training and all(not block.attention.measure_row_mass for block in model.blocks)


@pytest.mark.parametrize("bias", (True, False))
def test_qk_grad_norms_match_hand_sliced_gradients(bias):
    torch.manual_seed(0)
    model = build_model(tiny_config(bias=bias), VOCAB)
    tokens = random_tokens()
    language_model_loss(model(tokens), tokens).backward()
    norms = model.qk_grad_norms()
    heads, head_dim, hidden = 4, 8, 32
    for block, (q_norm, k_norm) in zip(model.blocks, norms):
        qkv = block.attention.qkv
        grads = [qkv.weight.grad.view(heads, 3, head_dim, hidden)]
        if bias:
            grads.append(qkv.bias.grad.view(heads, 3, head_dim, 1))
        by_hand = [torch.cat([g[:, part].flatten() for g in grads]).norm().item() for part in (0, 1)]
        assert (q_norm, k_norm) == pytest.approx(by_hand, rel=1e-6)
    # The trainer passes deepspeed.utils.safe_get_full_grad; any getter of the full gradient works.
    assert model.qk_grad_norms(lambda param: param.grad.clone()) == norms


def test_qk_grad_norms_before_backward_is_a_clear_error():
    model = build_model(tiny_config(), VOCAB)
    with pytest.raises(RuntimeError, match="no gradient"):
        model.qk_grad_norms()
