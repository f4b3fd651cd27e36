"""Length extrapolation of one finished run: `sa-megatron eval`'s own code, in process, whole-window and last-K.

Every length reads the same first `eval_tokens` tokens of the held-out stream (windows = eval_tokens // length),
so the columns compare the same text; `sa-megatron eval --max-windows W --batch-size B --score-last K` with the
`windows` and `batch_size` recorded in eval.json reproduces each number.
"""

import json
import os
from pathlib import Path
from typing import Optional

from sa_megatron.data import check_dataset_tokenizer
from sa_megatron.data.atomic import write_bytes_atomic
from sa_megatron.eval.perplexity import load_token_stream, perplexity_at_lengths
from sa_megatron.training.checkpoint import load_for_inference, newest_complete_checkpoint

BATCH_TOKENS = 2048  # tokens per forward pass: windows are batched so short lengths do not pay per-call overhead


def eval_settings(spec, seq_length: int, data: str) -> dict:
    """What eval.json must record for its numbers to be reused (a changed study re-evaluates)."""
    lengths = [m * seq_length for m in spec.multiples]
    return {"data": os.path.abspath(data), "lengths": lengths, "score_last": spec.score_last or seq_length,
            "eval_tokens": spec.eval_tokens, "batch_tokens": BATCH_TOKENS}


def evaluate_run(save_dir, data: str, settings: dict, output: Path) -> dict:
    loaded = load_for_inference(save_dir)  # the GPU when there is one
    check_dataset_tokenizer(data, loaded.config.model.vocab_size, loaded.tokenizer_sha256)
    stream = load_token_stream(data)
    results = {"settings": settings, "checkpoint": str(newest_complete_checkpoint(save_dir)),
               "train_seq_length": loaded.config.model.seq_length, "whole": [], "last": []}
    for length in settings["lengths"]:
        windows = _windows(settings["eval_tokens"], length)
        batch_size = max(1, settings["batch_tokens"] // length)
        for mode, score_last in (("whole", None), ("last", settings["score_last"])):
            (result,) = perplexity_at_lengths(loaded.model, loaded.config.model, stream, [length],
                                              score_last=score_last, batch_size=batch_size, max_windows=windows)
            results[mode].append({**result.as_dict(), "batch_size": batch_size, "max_windows": windows})
    write_bytes_atomic(output, json.dumps(results, indent=1).encode())
    return results


def _windows(eval_tokens: Optional[int], length: int) -> Optional[int]:
    return None if eval_tokens is None else max(1, eval_tokens // length)
