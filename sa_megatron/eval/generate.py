"""Text generation by recomputing the whole window each step (no KV cache: this is for inspecting models).

Sampling order: mask padded vocabulary rows, divide by temperature, keep the top-k logits, then keep the
minimal nucleus whose probability reaches top_p. Temperature 0 means greedy argmax.
"""

import math
from typing import Optional

import torch

from sa_megatron.errors import UserInputError

# Below this, sampling is greedy in effect and logits / temperature can overflow to inf (then NaN probabilities).
MIN_TEMPERATURE = 1e-4


def filter_logits(logits: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside top-k, then outside the top-p nucleus, to -inf. `logits`: (vocab,). 0 / 1.0 disable."""
    logits = logits.clone()
    if 0 < top_k < logits.numel():
        kth_largest = torch.topk(logits, top_k).values[-1]
        logits[logits < kth_largest] = -torch.inf
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the more likely ones already reach top_p; the most likely token always stays.
        mass_before = torch.cumsum(probs, dim=-1) - probs
        logits[order[mass_before >= top_p]] = -torch.inf
    return logits


def next_token(logits: torch.Tensor, *, temperature: float, top_k: int, top_p: float,
               generator: torch.Generator) -> int:
    if temperature == 0:
        return int(torch.argmax(logits))
    filtered = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)
    probs = torch.softmax(filtered, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.no_grad()
def generate_tokens(model, prompt_ids: list[int], *, max_new_tokens: int, vocab_size: int,
                    eod_id: Optional[int] = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    seed: int = 0, context_limit: Optional[int] = None) -> list[int]:
    """The new token ids after `prompt_ids`, stopping after `max_new_tokens` or at `eod_id` (not returned).

    `vocab_size` is the tokenizer's: logits for the padded rows beyond it are never sampled.
    `context_limit` keeps only the newest tokens as model input (learned positions cannot go further).
    """
    if not prompt_ids:
        raise UserInputError("generation needs at least one prompt token")
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature < math.inf) or top_k < 0 or not 0 < top_p <= 1:
        raise UserInputError(
            f"sampling needs temperature 0 (greedy) or in [{MIN_TEMPERATURE}, inf), top_k >= 0 and 0 < top_p <= 1; "
            f"got {temperature}, {top_k}, {top_p}"
        )
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    tokens = list(prompt_ids)
    new_tokens = []
    for _ in range(max_new_tokens):
        window = tokens[-context_limit:] if context_limit else tokens
        logits = model(torch.tensor([window], device=device))[0, -1, :vocab_size]
        token = next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        if token == eod_id:
            break
        tokens.append(token)
        new_tokens.append(token)
    return new_tokens


def generate(model, tokenizer, prompt: str, *, max_new_tokens: int = 100, temperature: float = 0.8,
             top_k: int = 50, top_p: float = 0.95, seed: int = 0, context_limit: Optional[int] = None) -> str:
    """The continuation of `prompt` as text. An empty prompt starts from EOD, i.e. a fresh document."""
    prompt_ids = tokenizer.encode(prompt) or [tokenizer.eod_id]
    new_ids = generate_tokens(
        model, prompt_ids, max_new_tokens=max_new_tokens, vocab_size=tokenizer.vocab_size,
        eod_id=tokenizer.eod_id, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        context_limit=context_limit,
    )
    # Decode prompt and continuation together: sentencepiece puts word-boundary spaces on the following piece.
    return tokenizer.decode(prompt_ids + new_ids)[len(tokenizer.decode(prompt_ids)):]
