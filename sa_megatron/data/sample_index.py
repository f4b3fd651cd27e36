"""The three index arrays behind a GPT dataset, built with vectorized numpy (no compile step).

Megatron's construction: documents are shuffled and concatenated into one token stream (document
index); sample i is the `seq_length + 1` tokens starting at stream position `i * seq_length`, stored as
(position in the document index, offset into that document) (sample index); samples are visited in a
shuffled order (shuffle index). Unlike Megatron, every epoch and every block of samples gets its own seed
derived from (seed, epoch), so the first samples never depend on how many were asked for: sample i is a
pure function of (data, seed, split, seq_length, i), and a resumed run sees exactly the samples it would have.
"""

import numpy as np

DOCUMENT_ORDER_STREAM, SAMPLE_ORDER_STREAM = 0, 1


def samples_per_epoch(num_tokens: int, seq_length: int) -> int:
    """Full samples one pass over the documents gives; each needs one token past its end for the label."""
    return max(num_tokens - 1, 0) // seq_length


def build_document_index(document_ids: np.ndarray, num_epochs: int, seed: int) -> np.ndarray:
    """Every document once per epoch, each epoch in its own seeded order."""
    dtype = np.int32 if document_ids.max(initial=0) <= np.iinfo(np.int32).max else np.int64  # ids, not count
    epochs = [np.random.default_rng([seed, epoch, DOCUMENT_ORDER_STREAM]).permutation(document_ids).astype(dtype)
              for epoch in range(num_epochs)]
    return np.concatenate(epochs)


def build_sample_index(sizes: np.ndarray, document_index: np.ndarray, seq_length: int, num_samples: int) -> np.ndarray:
    """(num_samples, 2) int64: where in `document_index` sample i starts, and the token offset in that document."""
    stream_ends = np.cumsum(sizes[document_index], dtype=np.int64)
    starts = np.arange(num_samples, dtype=np.int64) * seq_length
    positions = np.searchsorted(stream_ends, starts, side="right")
    offsets = starts - (stream_ends[positions] - sizes[document_index[positions]])
    return np.stack([positions, offsets], axis=1)


def build_shuffle_index(samples_per_block: int, num_blocks: int, seed: int) -> np.ndarray:
    """A permutation within each consecutive block of `samples_per_block` samples, seeded per block."""
    blocks = [np.random.default_rng([seed, block, SAMPLE_ORDER_STREAM]).permutation(samples_per_block)
              + block * samples_per_block for block in range(num_blocks)]
    return np.concatenate(blocks).astype(np.int64)


def build_blending_index(weights, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset of each blended sample, sample index within that dataset) for `size` samples.

    Same goal as Megatron's greedy (always draw from the dataset furthest behind its share), computed as a
    merge: dataset d's k-th sample is due at "time" (k + 1/2) / w_d, and samples are taken in order of
    due time (ties to the lower dataset index). This is vectorizable and prefix-stable (the first n samples
    do not depend on `size`); every prefix stays within one sample of its share for up to three datasets.
    """
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights / weights.sum()
    candidates = [np.arange(int(np.ceil(w * size)) + len(weights) + 1) if w > 0 else np.arange(0)
                  for w in weights]
    due = np.concatenate([(k + 0.5) / w for k, w in zip(candidates, weights) if len(k)])
    datasets = np.concatenate([np.full(len(k), d, dtype=np.int16) for d, k in enumerate(candidates)])
    order = np.argsort(due, kind="stable")[:size]
    return datasets[order], np.concatenate(candidates)[order].astype(np.int64)
