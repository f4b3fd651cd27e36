"""The model is the same on every attention backend, and it learns."""
import pytest
import torch

from sa_megatron.model import build_model, language_model_loss
from tests.model.tiny import VOCAB, random_tokens, tiny_config


@pytest.mark.parametrize("variant,position", [("sa", "rope"), ("softmax", "alibi"), ("sa_raw", "kerple"),
                                              ("sa", "kerple")])
def test_eager_and_chunked_backends_agree(variant, position):
    """float64, 300 tokens: the chunked kernel runs several 256-key tiles. Tolerance 1e-9 (only summation order
    differs)."""
    tokens = random_tokens(batch=1, seq=300)
    results = {}
    for backend in ("eager", "chunked"):
        torch.manual_seed(0)
        config = tiny_config(attention=variant, position_encoding=position, attention_backend=backend,
                             seq_length=300)
        model = build_model(config, VOCAB).double()
        logits = model(tokens)
        language_model_loss(logits[:, :-1], tokens[:, 1:]).backward()
        results[backend] = (logits.detach(), {name: p.grad for name, p in model.named_parameters()})
    (eager_logits, eager_grads), (chunked_logits, chunked_grads) = results["eager"], results["chunked"]
    torch.testing.assert_close(chunked_logits, eager_logits, rtol=1e-9, atol=1e-9)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("variant", ("softmax", "sa"))
def test_tiny_model_overfits_a_fixed_batch(variant):
    torch.manual_seed(0)
    model = build_model(tiny_config(hidden_size=64, attention=variant), VOCAB)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    tokens = random_tokens(batch=4, seq=33)
    losses = []
    for _ in range(50):
        loss = language_model_loss(model(tokens[:, :-1]), tokens[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
