"""Preprocessing writes Megatron's format: megatron-core reads our files identically; workers don't change bytes."""

import json
from pathlib import Path

import numpy as np
import pytest

from sa_megatron.data.corpus import CorpusReader
from sa_megatron.data.indexed_dataset import IndexedDataset, token_dtype, write_index
from sa_megatron.data.preprocess import preprocess
from sa_megatron.data.tokenizer import load_tokenizer
from sa_megatron.errors import DataError


def files_of(prefix):
    return {suffix: Path(f"{prefix}{suffix}").read_bytes() for suffix in (".bin", ".idx")}


def megatron_reader(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset

    return MegatronIndexedDataset(str(prefix))


@pytest.fixture(scope="module")
def gutenberg_dataset(bpe_model, gutenberg_files, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("preprocess") / "gutenberg"
    summary = preprocess(gutenberg_files[:3], bpe_model, prefix, workers=1, doc_boundary="blank-line")
    return prefix, summary


def test_documents_are_tokens_plus_eod(gutenberg_dataset, bpe_model, gutenberg_files):
    prefix, summary = gutenberg_dataset
    tokenizer = load_tokenizer(bpe_model)
    documents = list(CorpusReader(gutenberg_files[:3], doc_boundary="blank-line"))
    dataset = IndexedDataset(prefix)
    assert len(dataset) == summary.documents == len(documents)
    assert dataset.dtype == np.uint16 and summary.dtype == "uint16"
    for i in range(0, len(documents), 97):
        assert dataset.get(i).tolist() == tokenizer.encode(documents[i]) + [tokenizer.eod_id]
    sidecar = json.loads(Path(f"{prefix}.json").read_text())
    assert sidecar["tokenizer_sha256"] == tokenizer.sha256 and sidecar["vocab_size"] == 1000
    assert sidecar["tokens"] == dataset.num_tokens


def test_two_workers_write_identical_files(gutenberg_dataset, bpe_model, gutenberg_files, tmp_path):
    prefix, _ = gutenberg_dataset
    preprocess(gutenberg_files[:3], bpe_model, tmp_path / "two", workers=2, doc_boundary="blank-line")
    assert files_of(tmp_path / "two") == files_of(prefix)


def test_megatron_core_reads_our_files_identically(gutenberg_dataset):
    prefix, _ = gutenberg_dataset
    ours, theirs = IndexedDataset(prefix), megatron_reader(prefix)
    assert len(theirs) == len(ours)
    assert theirs.index.dtype == np.uint16
    np.testing.assert_array_equal(theirs.document_indices, np.arange(len(ours) + 1))
    np.testing.assert_array_equal(theirs.sequence_lengths, ours.sizes)
    for i in range(len(ours)):
        np.testing.assert_array_equal(theirs[i], ours.get(i))


def test_int32_for_large_vocabularies(make_dataset):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.int32
    documents = [np.array([70000, 1, 2]), np.array([5]), np.array([100000, 3])]
    prefix = make_dataset(documents, dtype=np.int32)
    theirs = megatron_reader(prefix)
    assert theirs.index.dtype == np.int32
    for i, document in enumerate(documents):
        np.testing.assert_array_equal(theirs[i], document)


def test_invalid_utf8_leaves_nothing_behind(bpe_model, tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("fine text\n" * 100)
    bad.write_bytes(b"ok\n\nbroken \xc3\x28 here\n")
    with pytest.raises(DataError, match=f"{bad}: invalid UTF-8 at byte offset 11"):
        preprocess([good, bad], bpe_model, tmp_path / "out", workers=2, doc_boundary="blank-line")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "good.txt"]


def test_skip_invalid_utf8(bpe_model, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\nbroken \xc3\x28 here\n\nfine\n")
    summary = preprocess([bad], bpe_model, tmp_path / "out", doc_boundary="blank-line", skip_invalid_utf8=True)
    assert (summary.documents, summary.skipped_invalid_utf8) == (2, 1)


def test_truncated_index(make_dataset):
    prefix = make_dataset([[1, 2, 3], [4, 5]])
    idx = Path(f"{prefix}.idx")
    idx.write_bytes(idx.read_bytes()[:-5])
    with pytest.raises(DataError, match=f"{idx}: truncated .idx"):
        IndexedDataset(prefix)
    idx.write_bytes(b"MMIDIDX")
    with pytest.raises(DataError, match="shorter than the 34-byte header"):
        IndexedDataset(prefix)
    idx.write_bytes(b"NOTANIDX" + bytes(40))
    with pytest.raises(DataError, match="not a Megatron mmap index"):
        IndexedDataset(prefix)


def test_bin_must_hold_exactly_what_the_index_describes(make_dataset, tmp_path):
    prefix = make_dataset([[1, 2, 3], [4, 5]])
    bin_path, idx_path = Path(f"{prefix}.bin"), Path(f"{prefix}.idx")
    original = bin_path.read_bytes()
    for size in (8, 9, 12, 11):  # short, not a whole token, a .bin from another preprocess run (longer)
        bin_path.write_bytes((original * 2)[:size])
        with pytest.raises(DataError, match=f"{bin_path} holds {size} bytes but {idx_path} describes 10 "
                                            r"\(5 uint16 tokens\); the two files come from different preprocess runs"):
            IndexedDataset(prefix)
    bin_path.write_bytes(original)
    assert IndexedDataset(prefix).get(1).tolist() == [4, 5]


@pytest.mark.parametrize("code", [6, 7, 9])  # Megatron's float64, float32, and no dtype at all
def test_index_dtype_must_be_an_integer_token_type(make_dataset, code):
    prefix = make_dataset([[1, 2, 3]])
    idx_path = Path(f"{prefix}.idx")
    data = bytearray(idx_path.read_bytes())
    data[17] = code  # the dtype byte follows the 9-byte magic and the u64 version
    idx_path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{idx_path}: dtype code {code} is not an integer token dtype; "
                                        r"expected one of 1 \(uint8\), 2 \(int8\), 3 \(int16\), 4 \(int32\), "
                                        r"5 \(int64\), 8 \(uint16\)"):
        IndexedDataset(prefix)


def test_missing_dataset_files(make_dataset):
    prefix = make_dataset([[1]])
    Path(f"{prefix}.bin").unlink()
    with pytest.raises(DataError, match=f"{prefix}.bin: no such file"):
        IndexedDataset(prefix)


def test_write_index_matches_megatron_writer(tmp_path):
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    sizes = [3, 1, 4, 1, 5]
    builder = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.uint16)
    for n in sizes:
        builder.add_document(torch.arange(n, dtype=torch.int64), [n])
    builder.finalize(str(tmp_path / "theirs.idx"))
    write_index(tmp_path / "ours.idx", np.uint16, sizes)
    assert (tmp_path / "ours.idx").read_bytes() == (tmp_path / "theirs.idx").read_bytes()


def test_progress_bar_ends_at_100_percent(bpe_model, tmp_path, capsys):
    corpus = tmp_path / "crlf.txt"
    corpus.write_bytes(b"\xef\xbb\xbf" + b"a line of text\r\n\r\n" * 2000)
    preprocess([corpus], bpe_model, tmp_path / "out", doc_boundary="blank-line", show_progress=True)
    final = capsys.readouterr().err.strip().split("\r")[-1]
    assert final.startswith("tokenize: 100%"), final
