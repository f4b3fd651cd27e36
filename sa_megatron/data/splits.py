"""Which split (0 train, 1 valid, 2 test) each document or file belongs to, deterministic for a given seed.

Documents are interleaved: every stretch of the corpus gives each split its share (within a few documents),
so a held-out split samples every file rather than the last ones. Files are dealt out whole, in a seeded order.
"""

import numpy as np

from sa_megatron.errors import DataError

SPLIT_NAMES = ("train", "valid", "test")
DEFAULT_SPLIT_SEED = 1234
# How `data.split` assigns documents, recorded in checkpoints: a run of the consecutive-ranges code (before this
# method) trained on other documents, including today's validation ones, so it must not be resumed by this code.
DOCUMENT_SPLIT_METHOD = "interleaved"


def shares_text(shares) -> str:
    """[98.0, 1.0, 1.0] -> "98,1,1", as --split and data.split write them."""
    return ",".join(f"{share:g}" for share in shares)


def interleave_splits(num_documents: int, shares, seed: int = DEFAULT_SPLIT_SEED) -> np.ndarray:
    """int8 split of each document, in proportion to the shares and spread evenly over the document order.

    Split s's k-th document is due at (k + u) / w_s, u uniform in [0, 1) and seeded per split (the jitter keeps
    the pattern from repeating with a fixed period), and documents take the splits in order of due time. So every
    prefix of n documents holds within 4 of n·w_s documents of split s, and document i's split does not depend
    on how many documents follow it: appending data never moves a held-out document into training.
    """
    weights = np.asarray(shares, dtype=np.float64) / sum(shares)
    due, splits = [], []
    for split, weight in enumerate(weights):
        if weight == 0:
            continue
        # Enough candidates: the num_documents-th due time is at most num_documents + len(weights).
        count = int(np.ceil(weight * (num_documents + len(weights)))) + 1
        jitter = np.random.default_rng([seed, split]).random(count)
        due.append((np.arange(count) + jitter) / weight)
        splits.append(np.full(count, split, dtype=np.int8))
    order = np.argsort(np.concatenate(due), kind="stable")[:num_documents]
    return np.concatenate(splits)[order]


def deal_files(num_files: int, shares, seed: int = DEFAULT_SPLIT_SEED) -> np.ndarray:
    """int8 split of each file: whole files in proportion to the shares, every split with a share gets one."""
    with_share = [name for name, share in zip(SPLIT_NAMES, shares) if share > 0]
    if num_files < len(with_share):
        raise DataError(f"{num_files} input files cannot give each split with a share ({', '.join(with_share)}) "
                        "a whole file; give more files or --split-by documents")
    order = np.random.default_rng(seed).permutation(num_files)
    splits = np.empty(num_files, dtype=np.int8)
    splits[order] = np.repeat(np.arange(len(shares), dtype=np.int8), file_counts(num_files, shares))
    return splits


def file_counts(num_files: int, shares) -> np.ndarray:
    """Files per split: largest remainders, then a file moved from the largest split to each empty one with a share."""
    exact = np.asarray(shares, dtype=np.float64) / sum(shares) * num_files
    counts = np.floor(exact).astype(np.int64)
    by_remainder = np.argsort(counts - exact, kind="stable")
    counts[by_remainder[:num_files - counts.sum()]] += 1
    for split in np.flatnonzero((counts == 0) & (exact > 0)):
        counts[np.argmax(counts)] -= 1
        counts[split] = 1
    return counts
