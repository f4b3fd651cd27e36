"""Perplexity at several context lengths: the length-extrapolation protocol of KERPLE and DAPE.

For each length L the evaluation token stream is cut into consecutive, non-overlapping windows of L input
tokens; window w reads tokens[w·L : w·L + L] and predicts tokens[w·L + 1 : w·L + L + 1]. By default every
position of a window is scored, as KERPLE and DAPE do. `score_last=K` scores only the last K positions, so
each scored token sees at least L − K tokens of context (a sharper test of long-range use; fewer tokens).
Windows longer than the training length run through the model's own attention backend ("auto" picks the
chunked core on CPU for long inputs, so no L×L score matrix is built).
"""

from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from sa_megatron.config.schema import ModelConfig
from sa_megatron.data.indexed_dataset import IndexedDataset
from sa_megatron.errors import DataError, UserInputError
from sa_megatron.eval.context import check_length
from sa_megatron.model import language_model_loss


@dataclass
class LengthPerplexity:
    length: int
    windows: int
    scored_tokens: int
    mean_nll: float
    ppl: float

    def as_dict(self) -> dict:
        return asdict(self)


def token_stream(stream_or_docs: Union[torch.Tensor, np.ndarray, Sequence]) -> torch.Tensor:
    """A 1-D int64 tensor: the stream itself, or the documents concatenated in order (each ends with EOD)."""
    if isinstance(stream_or_docs, (torch.Tensor, np.ndarray)) and stream_or_docs.ndim == 1:
        return torch.as_tensor(stream_or_docs, dtype=torch.long)
    return torch.cat([torch.as_tensor(np.asarray(doc), dtype=torch.long) for doc in stream_or_docs])


def load_token_stream(prefix: str, max_tokens: Optional[int] = None) -> torch.Tensor:
    """The documents of PREFIX.bin/.idx concatenated in order, reading only the first `max_tokens` when given."""
    dataset = IndexedDataset(prefix)
    docs, total = [], 0
    for index in range(len(dataset)):
        if max_tokens is not None and total >= max_tokens:
            break
        docs.append(np.asarray(dataset.get(index), dtype=np.int64))
        total += len(docs[-1])
    if not docs:
        raise DataError(f"{prefix}.idx: the dataset holds no documents")
    return token_stream(docs)[:max_tokens]


def window_count(num_tokens: int, length: int, max_windows: Optional[int] = None) -> int:
    """Windows of `length` inputs that fit: each also needs the one token after it as its last label."""
    count = max(num_tokens - 1, 0) // length
    return count if max_windows is None else min(count, max_windows)


def check_window_options(length: int, score_last: Optional[int], batch_size: int, max_windows: Optional[int]) -> int:
    """The number of tokens scored per window (the whole window when `score_last` is None)."""
    score_last = length if score_last is None else score_last
    if not 0 < score_last <= length:
        raise UserInputError(
            f"score_last (--score-last) must be in [1, {length}] for length {length}, got {score_last}"
        )
    if batch_size < 1 or (max_windows is not None and max_windows < 1):
        raise UserInputError(f"batch_size and max_windows must be positive, got {batch_size} and {max_windows}")
    return score_last


@torch.no_grad()
def perplexity_at_length(model, stream: torch.Tensor, length: int, *, score_last: Optional[int] = None,
                         batch_size: int = 1, max_windows: Optional[int] = None,
                         show_progress: Optional[bool] = False) -> LengthPerplexity:
    """`show_progress`: a bar over the windows on stderr; None shows it only when stderr is a terminal."""
    score_last = check_window_options(length, score_last, batch_size, max_windows)
    windows = window_count(stream.numel(), length, max_windows)
    if windows == 0:
        raise UserInputError(
            f"the evaluation stream has {stream.numel()} tokens: too few for one window of {length}"
        )
    model.eval()
    device = next(model.parameters()).device
    total_nll = 0.0
    with tqdm(total=windows, unit="window", desc=f"eval length {length}",
              disable=None if show_progress is None else not show_progress) as progress:
        for first in range(0, windows, batch_size):
            starts = range(first * length, min(first + batch_size, windows) * length, length)
            batch = torch.stack([stream[s:s + length + 1] for s in starts]).to(device)
            logits = model(batch[:, :-1])
            nll = language_model_loss(logits[:, -score_last:], batch[:, -score_last:], reduction="none")
            total_nll += nll.double().sum().item()
            progress.update(len(starts))
    scored = windows * score_last
    mean_nll = total_nll / scored
    return LengthPerplexity(length, windows, scored, mean_nll, float(np.exp(mean_nll)))


def perplexity_at_lengths(model, model_config: ModelConfig, stream_or_docs, lengths: Sequence[int], *,
                          score_last: Optional[int] = None, batch_size: int = 1,
                          max_windows: Optional[int] = None,
                          show_progress: Optional[bool] = False) -> list[LengthPerplexity]:
    """One result per length; every length and option is checked before any work."""
    for length in lengths:
        check_length(model_config, length)
        check_window_options(length, score_last, batch_size, max_windows)
    stream = token_stream(stream_or_docs)
    return [
        perplexity_at_length(model, stream, length, score_last=score_last, batch_size=batch_size,
                             max_windows=max_windows, show_progress=show_progress)
        for length in lengths
    ]
