"""Shared fixtures: the real corpora in ../shared/data, a tokenizer trained on them once, synthetic datasets."""

from pathlib import Path

import numpy as np
import pytest

from sa_megatron.data.corpus import CorpusReader
from sa_megatron.data.indexed_dataset import write_index
from sa_megatron.data.tokenizer import train_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
# Small enough to train in well under a second, large enough to exercise real merges.
TRAIN_SENTENCES = 20_000


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "gutenberg").is_dir():
        pytest.skip(f"real corpora not found at {SHARED_DATA} (see shared/data/README.md)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gutenberg_files(shared_data) -> list[Path]:
    return sorted((shared_data / "gutenberg").glob("*.txt"))


@pytest.fixture(scope="session")
def bpe_model(shared_data, gutenberg_files, tmp_path_factory) -> Path:
    prefix = tmp_path_factory.mktemp("tokenizer") / "gutenberg-bpe"
    return train_tokenizer(CorpusReader(gutenberg_files), prefix, 1000, "bpe", input_sentence_size=TRAIN_SENTENCES)


@pytest.fixture
def make_dataset(tmp_path):
    """Write documents (lists of token ids) as a Megatron dataset; return its prefix."""

    def make(documents, name="synthetic", dtype=np.uint16):
        prefix = tmp_path / name
        with open(f"{prefix}.bin", "wb") as stream:
            for document in documents:
                stream.write(np.asarray(document, dtype=dtype).tobytes())
        write_index(f"{prefix}.idx", dtype, [len(d) for d in documents])
        return str(prefix)

    return make


def random_documents(count: int, seed: int = 0, mean_length: int = 40, vocab: int = 1000) -> list[np.ndarray]:
    """Documents of varied length whose tokens are unique-ish, so misplaced tokens are caught."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(n)) for n in rng.integers(1, 2 * mean_length, size=count)]
