"""Generation with a KV cache computes what the full forward computes, and runs the model on the new token only."""

import pytest
import torch

from sa_megatron.eval.generate import generate_tokens
from sa_megatron.eval.kv_cache import FullRecompute, KVCacheDecoder, decoder_for
from sa_megatron.model import build_model
from tests.model.tiny import VOCAB, tiny_config

PROMPT = [5, 17, 42, 8, 3]
NEW_TOKENS = 20  # prompt + new tokens = 25 > seq_length 16: rope/alibi/kerple decode past the training length


def tiny_model(**overrides):
    torch.manual_seed(0)
    config = tiny_config(**overrides)
    return build_model(config, VOCAB).eval()


def greedy_without_cache(model, prompt, steps):
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    return tokens[len(prompt):]


@pytest.mark.parametrize("backend", ["eager", "chunked", "auto"])
@pytest.mark.parametrize("position", ["learned", "rope", "alibi", "kerple"])
@pytest.mark.parametrize("variant", ["softmax", "sa", "sa_raw"])
def test_cached_greedy_tokens_and_logits_match_the_full_forward(variant, position, backend):
    model = tiny_model(attention=variant, position_encoding=position, attention_backend=backend,
                       max_position_embeddings=32)
    tokens = generate_tokens(model, PROMPT, max_new_tokens=NEW_TOKENS, vocab_size=VOCAB, temperature=0.0)
    assert tokens == greedy_without_cache(model, PROMPT, NEW_TOKENS)
    # Every step's logits, not only their argmax: prefill, then one token at a time.
    decoder, sequence = KVCacheDecoder(model), PROMPT + tokens
    steps = [sequence[:len(PROMPT)]] + [[token] for token in tokens]
    for end, step in zip(range(len(PROMPT), len(sequence) + 1), steps):
        cached = decoder.step(torch.tensor([step]))
        with torch.no_grad():
            full = model(torch.tensor([sequence[:end]]))[:, -1]
        torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


def first_layer_input_lengths(model, prompt, steps):
    """Generate and return the sequence length of every input the token embedding (the first layer) saw."""
    lengths = []
    hook = model.forwards[0].register_forward_hook(lambda module, args, output: lengths.append(args[0].shape[1]))
    try:
        generate_tokens(model, prompt, max_new_tokens=steps, vocab_size=VOCAB, temperature=0.0)
    finally:
        hook.remove()
    return lengths


def test_each_step_runs_the_model_on_the_new_token_only():
    model = tiny_model(position_encoding="rope")
    assert isinstance(decoder_for(model), KVCacheDecoder)
    assert first_layer_input_lengths(model, PROMPT, 10) == [len(PROMPT)] + [1] * 9  # no step after the last token


def test_dape_recomputes_the_whole_sequence():
    model = tiny_model(position_encoding="dapev2-kerple")  # its score MLP reads the whole score matrix
    assert isinstance(decoder_for(model), FullRecompute)
    assert first_layer_input_lengths(model, PROMPT, 4) == [5, 6, 7, 8]
    tokens = generate_tokens(model, PROMPT, max_new_tokens=NEW_TOKENS, vocab_size=VOCAB, temperature=0.0)
    assert tokens == greedy_without_cache(model, PROMPT, NEW_TOKENS)
