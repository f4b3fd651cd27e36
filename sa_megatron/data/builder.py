"""`build_gpt_datasets`: train/valid/test datasets from one or more preprocessed prefixes, blended by weight."""

import numpy as np

from sa_megatron.data.blended_dataset import BlendedDataset
from sa_megatron.data.gpt_dataset import GPTDataset
from sa_megatron.data.indexed_dataset import IndexedDataset
from sa_megatron.data.preprocess import read_sidecar
from sa_megatron.data.sample_index import build_blending_index
from sa_megatron.errors import DataError

SPLIT_NAMES = ("train", "valid", "test")
MAX_ID_SCAN_TOKENS = 1 << 24


def parse_split(split: str) -> list[float]:
    """"969,30,1" (or "969/30/1"; missing parts are 0) -> three non-negative shares."""
    try:
        shares = [float(part) for part in split.replace("/", ",").split(",")]
    except ValueError:
        shares = []
    if not 1 <= len(shares) <= 3 or min(shares) < 0 or sum(shares) <= 0:
        raise DataError(f"data.split {split!r}: expected up to three non-negative numbers like '969,30,1'")
    return shares + [0.0] * (3 - len(shares))


def split_documents(num_documents: int, shares: list[float]) -> list[range]:
    """Consecutive document ranges in proportion to the shares, so splits never share a document."""
    bounds = np.round(np.cumsum([0.0] + shares) / sum(shares) * num_documents).astype(np.int64)
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def check_vocab(dataset: IndexedDataset, vocab_size: int) -> None:
    """The ids in the data must fit the model's vocabulary: trust our sidecar, else scan the tokens."""
    sidecar = read_sidecar(dataset.prefix)
    if sidecar is not None:
        built_with = sidecar["vocab_size"]
        source = f"{dataset.prefix}.json"
    else:
        built_with = 1 + max((int(dataset.tokens[i:i + MAX_ID_SCAN_TOKENS].max())
                              for i in range(0, len(dataset.tokens), MAX_ID_SCAN_TOKENS)), default=-1)
        source = f"{dataset.prefix}.bin"
    if built_with > vocab_size:
        raise DataError(
            f"{source}: the data was tokenized with a vocabulary of {built_with} ids, larger than the "
            f"tokenizer's {vocab_size}; preprocess it again with the run's tokenizer"
        )


def build_gpt_datasets(prefixes, weights, split, seq_length: int, seed: int, num_samples, cache_dir=None,
                       vocab_size=None):
    """(train, valid, test); a split with no share or no requested samples is None.

    weights: one per prefix, or None for proportional to each prefix's tokens in that split.
    """
    prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    if not prefixes:
        raise DataError("data.paths is empty; expected at least one dataset prefix")
    if weights is not None and (len(weights) != len(prefixes) or min(weights) < 0 or sum(weights) <= 0):
        raise DataError(f"data.weights {weights}: expected {len(prefixes)} non-negative numbers, not all zero")
    if seq_length < 1:
        raise DataError(f"seq_length {seq_length}: expected a positive number of tokens")
    datasets = [IndexedDataset(prefix) for prefix in prefixes]
    if vocab_size is not None:
        for dataset in datasets:
            check_vocab(dataset, vocab_size)
    shares = parse_split(split)
    ranges = [split_documents(len(dataset), shares) for dataset in datasets]
    result = []
    for split_id, (name, share, wanted) in enumerate(zip(SPLIT_NAMES, shares, num_samples)):
        if share == 0 or not wanted:
            result.append(None)
            continue
        documents = [r[split_id] for r in ranges]
        if len(datasets) == 1:
            result.append(GPTDataset(datasets[0], documents[0], name, seq_length, seed, wanted, cache_dir))
            continue
        blend_weights = weights if weights is not None else [
            int(d.sizes[r.start:r.stop].sum(dtype=np.int64)) for d, r in zip(datasets, documents)]
        if sum(blend_weights) == 0:
            raise DataError(f"the {name} split has no tokens in any of {', '.join(prefixes)}; "
                            "use more data or a larger split share")
        dataset_index, dataset_sample_index = build_blending_index(blend_weights, wanted)
        counts = np.bincount(dataset_index, minlength=len(datasets))
        parts = [GPTDataset(d, r, name, seq_length, seed, int(c), cache_dir) if c else None
                 for d, r, c in zip(datasets, documents, counts)]
        result.append(BlendedDataset(parts, dataset_index, dataset_sample_index))
    return tuple(result)
