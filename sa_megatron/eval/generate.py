"""Text generation with a KV cache (`kv_cache.py`), within the model's usable context (`context.py`).

Sampling order: mask padded vocabulary rows, divide by temperature, keep the top-k logits, then keep the
minimal nucleus whose probability reaches top_p. Temperature 0 means greedy argmax.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch

from sa_megatron.errors import UserInputError
from sa_megatron.eval.kv_cache import decoder_for

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


@dataclass
class ContextFit:
    prompt_ids: list[int]
    max_new_tokens: int
    notes: list[str]


def fit_to_context(prompt_ids: list[int], max_new_tokens: int, context: int) -> ContextFit:
    """Prompt and new tokens together fit in `context` tokens. A prompt that leaves too little room keeps its
    newest tokens, but never fewer than half the context (or all of it when shorter); the new tokens get the rest."""
    notes = []
    keep = min(len(prompt_ids), max(context - max_new_tokens, context // 2, 1))
    if keep < len(prompt_ids):
        notes.append(f"the prompt of {len(prompt_ids)} tokens keeps its last {keep}: the model's usable context is "
                     f"{context} tokens (see --max-context)")
    room = context - keep
    if max_new_tokens > room:
        notes.append(f"generating at most {room} of the {max_new_tokens} new tokens asked for: the model's usable "
                     f"context is {context} tokens and the prompt takes {keep} (see --max-context)")
    return ContextFit(prompt_ids[len(prompt_ids) - keep:], min(max_new_tokens, room), notes)


def generate_tokens(model, prompt_ids: list[int], *, max_new_tokens: int, vocab_size: int,
                    eod_id: Optional[int] = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    seed: int = 0) -> list[int]:
    """The new token ids after `prompt_ids`, stopping after `max_new_tokens` or at `eod_id` (not returned).

    `vocab_size` is the tokenizer's: logits for the padded rows beyond it are never sampled. The model sees the
    whole prompt and every new token: fit them to its context first (`fit_to_context`).
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
    decoder = decoder_for(model)
    logits = decoder.step(torch.tensor([prompt_ids], device=device))
    new_tokens = []
    while len(new_tokens) < max_new_tokens:
        token = next_token(logits[0, :vocab_size], temperature=temperature, top_k=top_k, top_p=top_p,
                           generator=generator)
        if token == eod_id:
            break
        new_tokens.append(token)
        if len(new_tokens) < max_new_tokens:  # no step after the last token: it may not fit the context
            logits = decoder.step(torch.tensor([[token]], device=device))
    return new_tokens


@dataclass
class Generation:
    text: str  # the continuation
    notes: list[str]  # what was cut to fit the context


def generate(model, tokenizer, prompt: str, *, context: int, max_new_tokens: int = 100, temperature: float = 0.8,
             top_k: int = 50, top_p: float = 0.95, seed: int = 0) -> Generation:
    """The continuation of `prompt`, within `context` tokens. An empty prompt starts from EOD (a fresh document)."""
    fit = fit_to_context(tokenizer.encode(prompt) or [tokenizer.eod_id], max_new_tokens, context)
    new_ids = generate_tokens(
        model, fit.prompt_ids, max_new_tokens=fit.max_new_tokens, vocab_size=tokenizer.vocab_size,
        eod_id=tokenizer.eod_id, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
    )
    # Decode prompt and continuation together: sentencepiece puts word-boundary spaces on the following piece.
    return Generation(tokenizer.decode(fit.prompt_ids + new_ids)[len(tokenizer.decode(fit.prompt_ids)):], fit.notes)
