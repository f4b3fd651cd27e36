"""`build_gpt_datasets`: train/valid/test datasets from one or more preprocessed prefixes, blended by weight."""

import numpy as np

from sa_megatron.config.validate import check_weights, parse_split
from sa_megatron.data.blended_dataset import BlendedDataset
from sa_megatron.data.gpt_dataset import GPTDataset
from sa_megatron.data.indexed_dataset import IndexedDataset
from sa_megatron.data.sample_index import build_blending_index
from sa_megatron.data.splits import SPLIT_NAMES, interleave_splits
from sa_megatron.data.tokenizer_check import check_dataset_tokenizer
from sa_megatron.errors import DataError


def split_documents(num_documents: int, shares: list[float]) -> list[np.ndarray]:
    """Sorted document ids of each split, interleaved over the whole dataset so valid and test sample every file.

    The assignment uses a fixed seed, not training.seed: runs that differ only in their seed validate on the
    same documents, so their validation losses compare.
    """
    splits = interleave_splits(num_documents, shares)
    return [np.flatnonzero(splits == split) for split in range(len(shares))]


def build_gpt_datasets(prefixes, weights, split, seq_length: int, seed: int, num_samples, cache_dir=None,
                       vocab_size=None, tokenizer_sha256=None):
    """(train, valid, test); a split with no share or no requested samples is None.

    weights: one per prefix, or None for proportional to each prefix's tokens in that split.
    vocab_size, tokenizer_sha256: when vocab_size is given, every prefix must come from that tokenizer
    (see `check_dataset_tokenizer`).
    """
    prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    if not prefixes:
        raise DataError("data.paths is empty; expected at least one dataset prefix")
    check_weights(weights, len(prefixes))
    shares = parse_split(split)
    if seq_length < 1:
        raise DataError(f"seq_length {seq_length}: expected a positive number of tokens")
    datasets = [IndexedDataset(prefix) for prefix in prefixes]
    if vocab_size is not None:
        for prefix in prefixes:
            check_dataset_tokenizer(prefix, vocab_size, tokenizer_sha256)
    documents_per_dataset = [split_documents(len(dataset), shares) for dataset in datasets]
    result = []
    for split_id, (name, share, wanted) in enumerate(zip(SPLIT_NAMES, shares, num_samples)):
        if share == 0 or not wanted:
            result.append(None)
            continue
        documents = [split_ids[split_id] for split_ids in documents_per_dataset]
        if len(datasets) == 1:
            result.append(GPTDataset(datasets[0], documents[0], name, seq_length, seed, wanted, cache_dir))
            continue
        blend_weights = weights if weights is not None else [
            int(d.sizes[ids].sum(dtype=np.int64)) for d, ids in zip(datasets, documents)]
        if sum(blend_weights) == 0:
            raise DataError(f"the {name} split has no tokens in any of {', '.join(prefixes)}; "
                            "use more data or a larger split share")
        dataset_index, dataset_sample_index = build_blending_index(blend_weights, wanted)
        counts = np.bincount(dataset_index, minlength=len(datasets))
        parts = [GPTDataset(d, ids, name, seq_length, seed, int(c), cache_dir) if c else None
                 for d, ids, c in zip(datasets, documents, counts)]
        result.append(BlendedDataset(parts, dataset_index, dataset_sample_index))
    return tuple(result)
