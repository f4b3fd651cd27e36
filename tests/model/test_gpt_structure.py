"""Structural properties: causality, the layer list, the embedding tie, Kerple parameters, activation checkpointing,
invalid option combinations."""
import pytest
import torch

from sa_megatron.model import GPTModel, build_model, count_parameters, gpt_layers, language_model_loss
from sa_megatron.model.stages import OutputHead
from sa_megatron.model.position import KerpleLogBias, RotaryEmbedding
from tests.model.tiny import VOCAB, random_tokens, tiny_config

POSITIONS = ("learned", "rope", "alibi", "kerple", "none", "dapev2-kerple")


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("variant", ("softmax", "sa"))
def test_future_tokens_never_change_earlier_logits(position, variant):
    torch.manual_seed(0)
    model = build_model(tiny_config(position_encoding=position, attention=variant), VOCAB).double()
    tokens = random_tokens(batch=2, seq=16)
    changed = tokens.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % VOCAB
    before, after = model(tokens), model(changed)
    torch.testing.assert_close(after[:, :9], before[:, :9], rtol=0, atol=1e-12)
    assert not torch.allclose(after[:, 9:], before[:, 9:])


def test_layer_specs_seed_each_layer_so_any_subset_builds_the_same_weights():
    config = tiny_config(position_encoding="kerple")
    specs = gpt_layers(config, VOCAB)
    assert len(specs) == config.num_layers + 4  # embedding, embedding output, blocks, final norm, head
    model = build_model(config, VOCAB, seed=7)
    # What a pipeline stage does: build only layer 3 with the seed of its index.
    torch.manual_seed(7 + 3)
    block = specs[3].build()
    for name, param in block.named_parameters():
        torch.testing.assert_close(param, model.get_parameter(f"3.{name}"), rtol=0, atol=0)
    other = build_model(config, VOCAB, seed=8)
    assert not torch.equal(other.get_parameter("3.attention.qkv.weight"), model.get_parameter("3.attention.qkv.weight"))


def test_tied_embedding_is_one_parameter_shared_with_the_head():
    torch.manual_seed(0)
    tied = build_model(tiny_config(tie_embeddings=True), VOCAB)
    untied = build_model(tiny_config(tie_embeddings=False), VOCAB)
    embedding = tied.tied_modules["word_embeddings"]
    assert tied.forwards[0] is embedding and tied.forwards[-1].args == (embedding,)  # lookup, then the head
    assert not any(isinstance(m, OutputHead) for m in tied.modules())
    assert count_parameters(untied) - count_parameters(tied) == VOCAB * 32
    # The shared weight's gradient gets both the lookup's and the head's contributions.
    tokens = random_tokens()
    language_model_loss(tied(tokens), tokens).backward()
    unused_rows = torch.ones(VOCAB, dtype=torch.bool)
    unused_rows[tokens.unique()] = False
    assert embedding.weight.grad[unused_rows].abs().sum() > 0  # only the head touches rows of unseen tokens
    assert isinstance(untied.forwards[-1], OutputHead) and not untied.tied_modules


def test_kerple_parameters_get_gradients_and_are_clamped():
    torch.manual_seed(0)
    model = build_model(tiny_config(position_encoding="kerple", attention="sa"), VOCAB)
    tokens = random_tokens()
    language_model_loss(model(tokens), tokens).backward()
    kerples = [m for m in model.modules() if isinstance(m, KerpleLogBias)]
    assert len(kerples) == 2
    for kerple in kerples:
        assert kerple.kerple_p.grad.abs().min() > 0 and kerple.kerple_a.grad.abs().min() > 0
        with torch.no_grad():
            kerple.kerple_p.fill_(-3.0)
            kerple.kerple_a[0] = 0.0
        p, a = kerple()
        assert p.min() >= KerpleLogBias.MIN_VALUE and a.min() >= KerpleLogBias.MIN_VALUE
    # Raw values below the floor act exactly like the floor.
    clamped = model(tokens)
    with torch.no_grad():
        for kerple in kerples:
            kerple.kerple_p.fill_(KerpleLogBias.MIN_VALUE)
            kerple.kerple_a[0] = KerpleLogBias.MIN_VALUE
    torch.testing.assert_close(model(tokens), clamped, rtol=0, atol=0)


def test_kerple_parameters_below_the_floor_still_learn():
    torch.manual_seed(0)
    model = build_model(tiny_config(position_encoding="kerple", attention="sa"), VOCAB)
    kerples = [m for m in model.modules() if isinstance(m, KerpleLogBias)]
    with torch.no_grad():
        for kerple in kerples:
            kerple.kerple_p[0], kerple.kerple_a[0] = -1.0, 0.005
    tokens = random_tokens()
    language_model_loss(model(tokens), tokens).backward()
    for kerple in kerples:
        assert kerple.kerple_p.grad[0] != 0 and kerple.kerple_a.grad[0] != 0


def test_kerple_parameters_start_uniform():
    torch.manual_seed(0)
    kerple = KerpleLogBias(4096, slice(None))
    assert 0 <= kerple.kerple_p.min() and kerple.kerple_p.max() <= 2 and abs(kerple.kerple_p.mean() - 1) < 0.05
    assert 0 <= kerple.kerple_a.min() and kerple.kerple_a.max() <= 1 and abs(kerple.kerple_a.mean() - 0.5) < 0.03


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    rotary = RotaryEmbedding(8, 10000.0)
    q = torch.randn(8).expand(1, 1, 12, 8)
    k = torch.randn(8).expand(1, 1, 12, 8)
    q_rot, k_rot = rotary(q.double(), k.double())
    scores = (q_rot @ k_rot.transpose(-1, -2))[0, 0]
    for offset in range(-3, 4):
        diagonal = scores.diagonal(offset)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal))


def test_activation_checkpointing_gives_the_same_loss_and_grads():
    tokens = random_tokens()
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(tiny_config(attention="sa", hidden_dropout=0.1), VOCAB)
        model.activation_checkpointing = checkpointing
        torch.manual_seed(1)
        loss = language_model_loss(model(tokens), tokens)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (loss_plain, grads_plain), (loss_ckpt, grads_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=0, atol=0)
    for plain, ckpt in zip(grads_plain, grads_ckpt):
        torch.testing.assert_close(ckpt, plain, rtol=1e-6, atol=1e-7)


def test_gpt_model_runs_any_layer_list():
    layers = gpt_layers(tiny_config(num_layers=3), VOCAB)
    model = GPTModel(layers)
    assert len(model.blocks) == 3 and model(random_tokens()).shape == (2, 16, VOCAB)
