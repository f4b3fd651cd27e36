"""Preprocessing writes Megatron's format: megatron-core reads our files identically; workers don't change bytes;
a held-out split deals documents or whole files to PREFIX_train/_valid/_test."""

import json
from pathlib import Path

import numpy as np
import pytest

from sa_megatron.data.corpus import CorpusReader
from sa_megatron.data.indexed_dataset import IndexedDataset, token_dtype, write_index
from sa_megatron.data.preprocess import HeldOutSplit, preprocess, preprocess_split
from sa_megatron.data.splits import interleave_splits
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


def test_split_by_documents_draws_every_split_from_every_file(gutenberg_dataset, bpe_model, gutenberg_files, tmp_path):
    """Each split holds the corpus's documents it was dealt, byte for byte and in corpus order, from every file."""
    whole, summary = gutenberg_dataset
    split = HeldOutSplit((90, 5, 5), "documents", seed=7)
    summaries = preprocess_split(gutenberg_files[:3], bpe_model, tmp_path / "books", split, workers=2,
                                 doc_boundary="blank-line")
    corpus = IndexedDataset(whole)
    dealt = interleave_splits(len(corpus), split.shares, split.seed)
    file_ends = np.cumsum([len(list(CorpusReader([f], doc_boundary="blank-line"))) for f in gutenberg_files[:3]])
    for index, name in enumerate(("train", "valid", "test")):
        prefix = tmp_path / f"books_{name}"
        dataset, positions = IndexedDataset(prefix), np.flatnonzero(dealt == index)
        assert len(dataset) == summaries[name].documents == len(positions)
        for i in range(0, len(positions), 7):
            np.testing.assert_array_equal(dataset.get(i), corpus.get(int(positions[i])))
        from_file = np.bincount(np.searchsorted(file_ends, positions, side="right"), minlength=3)
        assert from_file.min() > 0, (name, from_file)
        sidecar = json.loads(Path(f"{prefix}.json").read_text())
        assert sidecar["split"] == {"name": name, "shares": [90, 5, 5], "by": "documents", "seed": 7}
        assert sidecar["inputs"] == [str(f) for f in gutenberg_files[:3]] and sidecar["tokens"] == dataset.num_tokens
    assert sum(s.tokens for s in summaries.values()) == summary.tokens
    one_worker = preprocess_split(gutenberg_files[:3], bpe_model, tmp_path / "again", split, doc_boundary="blank-line")
    assert one_worker == summaries
    for name in ("train", "valid", "test"):
        assert files_of(tmp_path / f"again_{name}") == files_of(tmp_path / f"books_{name}")


@pytest.fixture
def small_books(shared_data, tmp_path):
    """Six real text files: Alice cut into parts at blank lines."""
    paragraphs = (shared_data / "gutenberg/alice_in_wonderland_pg11.txt").read_text().split("\n\n")[:240]
    paths = [tmp_path / f"part{i}.txt" for i in range(6)]
    for i, path in enumerate(paths):
        path.write_text("\n\n".join(paragraphs[i * 40: (i + 1) * 40]) + "\n")
    return paths


def test_split_by_files_keeps_each_file_whole_in_one_split(small_books, bpe_model, tmp_path):
    split = HeldOutSplit((60, 20, 20), "files")
    preprocess_split(small_books, bpe_model, tmp_path / "out" / "parts", split, doc_boundary="blank-line")
    inputs = {}
    for name in ("train", "valid", "test"):
        prefix = tmp_path / "out" / f"parts_{name}"
        sidecar = json.loads(Path(f"{prefix}.json").read_text())
        assert sidecar["split"] == {"name": name, "shares": [60, 20, 20], "by": "files", "seed": 1234}
        inputs[name] = sidecar["inputs"]
        preprocess(inputs[name], bpe_model, tmp_path / name, doc_boundary="blank-line")
        assert files_of(prefix) == files_of(tmp_path / name)  # exactly the split's files, in input order
    assert [len(inputs[name]) for name in ("train", "valid", "test")] == [4, 1, 1]
    assert sorted(sum(inputs.values(), [])) == sorted(map(str, small_books))
    other_seed = HeldOutSplit((60, 20, 20), "files", seed=1)
    preprocess_split(small_books, bpe_model, tmp_path / "seed1", other_seed, doc_boundary="blank-line")
    assert json.loads(Path(f"{tmp_path}/seed1_valid.json").read_text())["inputs"] != inputs["valid"]


def test_a_split_with_no_share_is_not_written(small_books, bpe_model, tmp_path):
    out = tmp_path / "out"
    summaries = preprocess_split(small_books, bpe_model, out / "parts", HeldOutSplit((9, 1, 0), "documents"))
    assert list(summaries) == ["train", "valid"] and summaries["valid"].documents == 1
    assert sorted(p.name for p in out.iterdir()) == [f"parts_{n}{s}" for n in ("train", "valid")
                                                    for s in (".bin", ".idx", ".json")]


def test_a_split_that_cannot_be_filled_is_one_error_and_writes_nothing(small_books, bpe_model, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"^2 input files cannot give each split with a share \(train, valid, test\) "
                                        "a whole file; give more files or --split-by documents$"):
        preprocess_split(small_books[:2], bpe_model, out / "x", HeldOutSplit((98, 1, 1), "files"))
    with pytest.raises(DataError, match=r"^--split 98,1,1 --split-by documents gives the valid split none of the 6 "
                                        "documents; give it a larger share or more documents"):
        preprocess_split(small_books, bpe_model, out / "x", HeldOutSplit((98, 1, 1), "documents"))
    assert not out.exists() or not list(out.iterdir())
    with pytest.raises(DataError, match="split by 'lines': expected one of documents, files"):
        HeldOutSplit((98, 1, 1), "lines")
