"""GPT samples: exactly the concatenated document stream, deterministic, cached, split and blended correctly."""

from pathlib import Path

import numpy as np
import pytest

from sa_megatron.data import build_gpt_datasets, check_dataset_tokenizer
from sa_megatron.data.builder import split_documents
from sa_megatron.data.corpus import CorpusReader
from sa_megatron.data.sample_index import build_blending_index
from sa_megatron.errors import ConfigError, DataError
from tests.data.conftest import random_documents

SEQ = 32


def train_only(prefix, samples, seed=1234, split="1,0,0", **options):
    return build_gpt_datasets([prefix], None, split, SEQ, seed, (samples, 0, 0), **options)[0]


def stream_of(dataset):
    """The token stream the samples must be cut from: documents in document-index order, concatenated."""
    return np.concatenate([dataset.dataset.get(int(d)) for d in dataset.document_index]).astype(np.int64)


def test_samples_are_windows_of_the_concatenated_documents(make_dataset):
    prefix = make_dataset(random_documents(300))
    dataset = train_only(prefix, 1000)  # several epochs of a ~12k-token dataset
    stream = stream_of(dataset)
    for i in range(len(dataset)):
        start = int(dataset.shuffle_index[i]) * SEQ
        np.testing.assert_array_equal(dataset[i], stream[start: start + SEQ + 1])
    assert dataset[0].dtype == np.int64 and dataset[0].shape == (SEQ + 1,)
    assert not np.array_equal(dataset.shuffle_index[:50], np.arange(50))  # visited in shuffled order
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_every_epoch_visits_every_document_once(make_dataset):
    prefix = make_dataset(random_documents(50))
    dataset = train_only(prefix, 200)
    epochs = np.asarray(dataset.document_index).reshape(-1, 50)
    assert all(sorted(epoch) == list(range(50)) for epoch in epochs) and len(epochs) > 1


def test_deterministic_across_rebuilds_and_cache_reuse(make_dataset, tmp_path):
    import shutil

    prefix = make_dataset(random_documents(200))
    built = train_only(prefix, 300)
    first = [built[i] for i in range(300)]
    cache = Path(prefix).parent / "index-cache"
    entries = list(cache.iterdir())
    assert len(entries) == 1
    cached = train_only(prefix, 300)
    assert isinstance(cached.sample_index, np.memmap)  # loaded, not rebuilt
    shutil.rmtree(cache)
    rebuilt = train_only(prefix, 300, cache_dir=tmp_path / "elsewhere")
    for i in range(300):
        np.testing.assert_array_equal(cached[i], first[i])
        np.testing.assert_array_equal(rebuilt[i], first[i])
    other_seed = train_only(prefix, 300, seed=7)
    assert [other_seed[i].tolist() for i in range(5)] != [sample.tolist() for sample in first[:5]]


def test_cache_is_found_for_prefixes_with_glob_characters(make_dataset):
    prefix = make_dataset(random_documents(50), name="web[2024]*?")
    train_only(prefix, 100)
    assert isinstance(train_only(prefix, 100).sample_index, np.memmap)  # loaded from the cache, not rebuilt


def test_sample_i_does_not_depend_on_how_many_were_requested(make_dataset):
    """What makes resuming exact: the trainer's consumed-samples counter picks up the same next batch."""
    prefix = make_dataset(random_documents(100))
    short, long = train_only(prefix, 7), train_only(prefix, 5000)
    for i in range(7):
        np.testing.assert_array_equal(short[i], long[i])


def test_splits_have_disjoint_documents(make_dataset):
    prefix = make_dataset(random_documents(1000))
    train, valid, test = build_gpt_datasets(prefix, None, "969,30,1", SEQ, 1, (100, 20, 3))
    documents = [set(np.asarray(d.document_index).tolist()) for d in (train, valid, test)]
    assert not documents[0] & documents[1] and not documents[0] & documents[2] and not documents[1] & documents[2]
    assert set.union(*documents) == set(range(1000))
    assert abs(len(documents[1]) - 30) <= 4 and abs(len(documents[2]) - 1) <= 4
    stream = stream_of(valid)  # the valid documents are scattered ids, not a range: samples still cut the stream
    for i in range(len(valid)):
        start = int(valid.shuffle_index[i]) * SEQ
        np.testing.assert_array_equal(valid[i], stream[start: start + SEQ + 1])


def test_split_documents_interleave_evenly_and_do_not_move_when_data_is_appended():
    """Every stretch of the dataset gives each split its share, so the held-out splits are not its last files."""
    shares = [90, 7, 3]
    splits = split_documents(5000, shares)
    split_of = np.empty(5000, dtype=np.int64)
    for split, ids in enumerate(splits):
        split_of[ids] = split
        assert np.all(np.diff(ids) > 0)  # sorted, no document twice
    assert sum(len(ids) for ids in splits) == 5000
    per_prefix = np.cumsum(np.eye(3)[split_of], axis=0)
    expected = np.outer(np.arange(1, 5001), np.array(shares) / 100)
    assert np.abs(per_prefix - expected).max() <= 4
    appended = split_documents(8000, shares)
    for short, long in zip(splits, appended):
        np.testing.assert_array_equal(short, long[long < 5000])
    assert [len(ids) for ids in split_documents(10, [1, 0, 0])] == [10, 0, 0]


def test_valid_and_test_splits_sample_every_file_of_a_real_corpus(bpe_model, gutenberg_files, tmp_path):
    """The corpus/*.txt case: before, the valid and test splits were the alphabetically last files' documents."""
    from sa_megatron.data.preprocess import preprocess

    files = gutenberg_files[:3]
    prefix = str(tmp_path / "books")
    preprocess(files, bpe_model, prefix, doc_boundary="blank-line")
    file_ends = np.cumsum([len(list(CorpusReader([f], doc_boundary="blank-line"))) for f in files])
    datasets = build_gpt_datasets([prefix], None, "90,5,5", SEQ, 1, (10, 10, 10))
    for split in datasets:
        documents = np.unique(np.asarray(split.document_index))
        per_file = np.bincount(np.searchsorted(file_ends, documents, side="right"), minlength=len(files))
        share = len(documents) / file_ends[-1]
        file_sizes = np.diff(file_ends, prepend=0)
        # A file is the difference of two prefixes, each within 4 documents of its share.
        assert np.abs(per_file - share * file_sizes).max() <= 8, (per_file, share * file_sizes)
        assert per_file.min() > 0


def test_validation_documents_do_not_depend_on_the_training_seed(make_dataset):
    """Runs that differ only in their seed compare validation losses on the same documents."""
    prefix = make_dataset(random_documents(400))
    valid = [build_gpt_datasets([prefix], None, "90,10,0", SEQ, seed, (1, 50, 0))[1] for seed in (1, 7)]
    documents = [sorted(set(np.asarray(v.document_index).tolist())) for v in valid]
    assert documents[0] == documents[1]
    assert [valid[0][i].tolist() for i in range(5)] != [valid[1][i].tolist() for i in range(5)]  # order is seeded


def test_cache_tells_apart_document_sets_of_equal_sizes(make_dataset):
    """Two splits with as many documents of the same sizes must not share a cache entry."""
    from sa_megatron.data.gpt_dataset import GPTDataset
    from sa_megatron.data.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(make_dataset([np.full(40, i) for i in range(10)]))
    even = GPTDataset(dataset, np.arange(0, 10, 2), "train", SEQ, 1, 5)
    odd = GPTDataset(dataset, np.arange(1, 10, 2), "train", SEQ, 1, 5)
    assert set(np.asarray(even.document_index).tolist()) == {0, 2, 4, 6, 8}
    assert set(np.asarray(odd.document_index).tolist()) == {1, 3, 5, 7, 9}
    assert set(odd[0].tolist()) <= {1, 3, 5, 7, 9}


def test_empty_split_or_zero_samples_is_none(make_dataset):
    prefix = make_dataset(random_documents(100))
    train, valid, test = build_gpt_datasets([prefix], None, "90,10,0", SEQ, 1, (10, 0, 5))
    assert len(train) == 10 and valid is None and test is None


def test_blend_honours_weights_within_one_sample(make_dataset):
    prefixes = [make_dataset(random_documents(200, seed=s), name=f"d{s}") for s in range(3)]
    weights = [0.5, 0.3, 0.2]
    blend = build_gpt_datasets(prefixes, weights, "1,0,0", SEQ, 3, (1000, 0, 0))[0]
    counts = np.cumsum(np.eye(3, dtype=np.int64)[blend.dataset_index], axis=0)
    expected = np.outer(np.arange(1, 1001), weights)
    assert np.abs(counts - expected).max() <= 1
    sample = blend[10]
    part = blend.datasets[blend.dataset_index[10]]
    np.testing.assert_array_equal(sample, part[int(blend.dataset_sample_index[10])])


def test_blending_index_many_datasets_and_prefix_stability():
    weights = np.random.default_rng(0).dirichlet(np.ones(8))
    datasets, samples = build_blending_index(weights, 20000)
    counts = np.bincount(datasets, minlength=8)
    assert np.abs(counts - weights * 20000).max() <= 2  # Megatron's greedy reaches ~1.8 with this many
    for d in range(8):
        assert samples[datasets == d].tolist() == list(range(counts[d]))
    short, _ = build_blending_index(weights, 500)
    np.testing.assert_array_equal(short, datasets[:500])


def test_seq_length_longer_than_split(make_dataset):
    prefix = make_dataset([[1, 2, 3]] * 100)
    with pytest.raises(DataError, match=r"synthetic.idx: the valid split has 3 tokens in 1 documents, fewer than seq_length \+ 1 = 33"):
        build_gpt_datasets(prefix, None, "99,1,0", SEQ, 1, (10, 10, 0))


def test_blend_with_an_empty_split_everywhere(make_dataset):
    prefixes = [make_dataset([[1] * 50] * 3, name=name) for name in ("a", "b")]
    with pytest.raises(DataError, match=r"the valid split has no tokens in any of .*a, .*b;"):
        build_gpt_datasets(prefixes, None, "99,1,0", 8, 1, (4, 4, 0))


def test_vocab_mismatch(make_dataset, bpe_model, tmp_path):
    from sa_megatron.data.preprocess import preprocess

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some words to tokenize\n" * 50)
    prefix = tmp_path / "tokenized"
    preprocess([corpus], bpe_model, prefix)
    build_gpt_datasets([str(prefix)], None, "1,0,0", 8, 1, (4, 0, 0), vocab_size=1000)
    with pytest.raises(DataError, match=f"{prefix}.json: the data was tokenized with a vocabulary of 1000 ids"):
        build_gpt_datasets([str(prefix)], None, "1,0,0", 8, 1, (4, 0, 0), vocab_size=512)
    sidecar = Path(f"{prefix}.json")
    sidecar.write_text("{truncated")
    with pytest.raises(DataError, match=f"{sidecar}: not a preprocess sidecar"):
        build_gpt_datasets([str(prefix)], None, "1,0,0", 8, 1, (4, 0, 0), vocab_size=1000)
    no_sidecar = make_dataset([[1, 2, 600]] * 20)
    with pytest.raises(DataError, match="synthetic.bin: the data was tokenized with a vocabulary of 601 ids"):
        build_gpt_datasets([no_sidecar], None, "1,0,0", 8, 1, (4, 0, 0), vocab_size=512)


def test_data_from_another_tokenizer_of_the_same_size_is_refused(bpe_model, gutenberg_files, tmp_path):
    """Same vocab size, different pieces: the ids would fit but mean other text, so the sha256 decides."""
    from sa_megatron.data.preprocess import preprocess
    from sa_megatron.data.tokenizer import load_tokenizer, train_tokenizer

    other = load_tokenizer(train_tokenizer(CorpusReader(gutenberg_files[:1]), tmp_path / "other", 1000, "bpe",
                                           input_sentence_size=3000))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some words to tokenize\n" * 50)
    ours = load_tokenizer(bpe_model)
    assert other.vocab_size == ours.vocab_size and other.sha256 != ours.sha256
    prefix = str(tmp_path / "tokenized")
    preprocess([corpus], bpe_model, prefix)
    build_gpt_datasets([prefix], None, "1,0,0", 8, 1, (4, 0, 0), vocab_size=1000, tokenizer_sha256=ours.sha256)
    check_dataset_tokenizer(prefix, ours.vocab_size, ours.sha256)
    message = (f"{prefix}.json: the data was tokenized with a different tokenizer .sha256 {ours.sha256[:12]}…, "
               f"not {other.sha256[:12]}….; preprocess it again with the run's tokenizer")
    with pytest.raises(DataError, match=message):
        build_gpt_datasets([prefix], None, "1,0,0", 8, 1, (4, 0, 0), vocab_size=1000, tokenizer_sha256=other.sha256)
    with pytest.raises(DataError, match=message):
        check_dataset_tokenizer(prefix, other.vocab_size, other.sha256)


def test_data_without_sidecar_is_scanned_for_ids(make_dataset):
    prefix = make_dataset([[1, 2, 511]] * 20)
    check_dataset_tokenizer(prefix, 512, "0" * 64)  # no sidecar: nothing names the tokenizer, the ids fit
    with pytest.raises(DataError, match="synthetic.bin: the data was tokenized with a vocabulary of 512 ids, larger than the tokenizer's 511"):
        check_dataset_tokenizer(prefix, 511, None)


def test_bad_split_and_weights(make_dataset):
    """The builder applies the config's own rules (one parser): Megatron's three comma-separated shares, finite weights."""
    prefix = make_dataset(random_documents(10))
    for split in ("a,b", "1", "1/0/0", "nan,1,0"):
        with pytest.raises(ConfigError, match=f"data.split must be three finite, non-negative numbers.*; got '{split}'"):
            build_gpt_datasets([prefix], None, split, SEQ, 1, (1, 0, 0))
    with pytest.raises(ConfigError, match="data.weights has 1 entries but data.paths has 2"):
        build_gpt_datasets([prefix, prefix], [1.0], "1,0,0", SEQ, 1, (1, 0, 0))
    for weights in ([float("nan"), 1.0], [float("inf"), 1.0], [0, 0]):
        with pytest.raises(ConfigError, match="data.weights must be finite, non-negative numbers, not all zero"):
            build_gpt_datasets([prefix, prefix], weights, "1,0,0", SEQ, 1, (1, 0, 0))
