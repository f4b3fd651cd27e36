"""The language-model loss, parameter counting, FLOPs per token and the weight-decay rule."""
import pytest
import torch
import torch.nn.functional as F

from sa_megatron.model import build_model, count_parameters, flops_per_token, language_model_loss, no_weight_decay
from sa_megatron.model.accounting import matmul_parameters
from sa_megatron.model.mlp import ffn_hidden_size
from tests.model.tiny import VOCAB, tiny_config


def test_language_model_loss_equals_torch_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, VOCAB)
    labels = torch.randint(0, VOCAB, (2, 5))
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), reduction="none").view(2, 5)
    torch.testing.assert_close(language_model_loss(logits, labels, reduction="none"), expected)
    torch.testing.assert_close(language_model_loss(logits, labels), expected.mean())
    loss = language_model_loss(logits.bfloat16(), labels)
    assert loss.dtype == torch.float32
    with pytest.raises(ValueError, match="reduction"):
        language_model_loss(logits, labels, reduction="sum")


@pytest.mark.parametrize("mlp", ("gelu", "swiglu"))
def test_flops_per_token_is_six_times_matmul_weights_plus_attention(mlp):
    config = tiny_config(mlp=mlp, tie_embeddings=False, position_encoding="rope")
    model = build_model(config, VOCAB)
    # The matmul weights counted by hand from the built model: every 2-D weight except the embedding lookup.
    matmul_weights = sum(p.numel() for name, p in model.named_parameters()
                         if p.ndim == 2 and name != "0.weight")  # layer 0: the untied token embedding
    assert matmul_parameters(config, VOCAB) == matmul_weights
    h, L, s = config.hidden_size, config.num_layers, config.seq_length
    assert flops_per_token(config, VOCAB) == 6 * matmul_weights + 12 * L * h * s


def test_ffn_defaults():
    assert ffn_hidden_size(tiny_config(mlp="gelu", hidden_size=96)) == 384
    assert ffn_hidden_size(tiny_config(mlp="swiglu", hidden_size=96)) == 256  # 8/3 · 96 = 256, a multiple of 64
    assert ffn_hidden_size(tiny_config(mlp="swiglu", hidden_size=100)) == 320  # 266.7 rounded up to 64
    assert ffn_hidden_size(tiny_config(ffn_hidden_size=50)) == 50


def test_count_parameters_counts_a_tied_weight_once():
    tied = build_model(tiny_config(tie_embeddings=True), VOCAB)
    assert count_parameters(tied) == sum(p.numel() for p in {id(p): p for p in tied.parameters()}.values())
    state = tied.state_dict()
    assert count_parameters(tied) == sum(t.numel() for t in state.values())  # one entry: the tied module


def test_no_weight_decay_exempts_norms_biases_and_position_biases():
    model = build_model(tiny_config(position_encoding="dapev2-kerple", norm="rmsnorm"), VOCAB)
    decided = {name: no_weight_decay(name, param) for name, param in model.named_parameters()}
    exempt = {name for name, value in decided.items() if value}
    decayed = {name for name, value in decided.items() if not value}
    assert all(p.ndim == 2 for name, p in model.named_parameters() if name in decayed)
    assert {"2.attention.kerple.kerple_p", "2.attention.kerple.kerple_a",
            "2.attention.dape.fc_in.bias", "2.attention_norm.weight",
            "2.attention.qkv.bias"} <= exempt
    assert {"2.attention.dape.fc_in.weight", "2.attention.qkv.weight",
            "tied_modules.word_embeddings.weight"} <= decayed
    # The rule is by name too, for parameters that are not 1-D.
    assert no_weight_decay("x.kerple_p", torch.nn.Parameter(torch.zeros(2, 2)))
    assert no_weight_decay("x.final_norm.weight", torch.nn.Parameter(torch.zeros(2, 2)))
