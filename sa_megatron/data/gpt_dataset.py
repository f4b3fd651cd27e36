"""GPT samples: `seq_length + 1` consecutive tokens of the shuffled document stream of one split."""

from pathlib import Path

import numpy as np

from sa_megatron.data import index_cache
from sa_megatron.data.indexed_dataset import IndexedDataset
from sa_megatron.data.sample_index import (build_document_index, build_sample_index, build_shuffle_index,
                                           samples_per_epoch)
from sa_megatron.errors import DataError


class GPTDataset:
    """`ds[i]` -> int64 array of seq_length + 1 tokens (inputs are [:-1], labels [1:]); samples span documents."""

    def __init__(self, dataset: IndexedDataset, documents: np.ndarray, split_name: str, seq_length: int, seed: int,
                 num_samples: int, cache_dir=None):
        """documents: the ids of this split's documents, in any order (the document index shuffles them)."""
        self.dataset, self.seq_length, self.num_samples = dataset, seq_length, num_samples
        sizes = dataset.sizes[documents]
        num_tokens = int(sizes.sum(dtype=np.int64))
        per_epoch = samples_per_epoch(num_tokens, seq_length)
        if per_epoch == 0:
            raise DataError(
                f"{dataset.prefix}.idx: the {split_name} split has {num_tokens} tokens in {len(documents)} documents, "
                f"fewer than seq_length + 1 = {seq_length + 1}; use a shorter sequence, more data or a larger split share"
            )
        num_epochs = -(-num_samples // per_epoch)
        description = {"seed": seed, "seq_length": seq_length, "documents": len(documents)}
        key = index_cache.cache_key(description, documents, sizes)
        cache_dir = Path(cache_dir) if cache_dir else Path(dataset.prefix).parent / "index-cache"
        name = Path(dataset.prefix).name
        arrays = index_cache.load_cached(cache_dir, name, key, num_epochs)
        if arrays is None:
            document_index = build_document_index(documents, num_epochs, seed)
            arrays = {
                "document_index": document_index,
                "sample_index": build_sample_index(dataset.sizes, document_index, seq_length, num_epochs * per_epoch),
                "shuffle_index": build_shuffle_index(per_epoch, num_epochs, seed),
            }
            index_cache.store(cache_dir, name, key, num_epochs, arrays,
                              {**description, "dataset": dataset.prefix, "split": split_name, "epochs": num_epochs})
        self.document_index = arrays["document_index"]
        self.sample_index = arrays["sample_index"]
        self.shuffle_index = arrays["shuffle_index"]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> np.ndarray:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"sample {index} is out of range for a dataset of {self.num_samples} samples")
        position, offset = (int(v) for v in self.sample_index[self.shuffle_index[index % self.num_samples]])
        sample = np.empty(self.seq_length + 1, dtype=np.int64)
        filled = 0
        while filled < len(sample):
            document = int(self.document_index[position])
            piece = self.dataset.get(document, offset, min(int(self.dataset.sizes[document]) - offset, len(sample) - filled))
            sample[filled: filled + len(piece)] = piece
            filled += len(piece)
            position, offset = position + 1, 0
        return sample
