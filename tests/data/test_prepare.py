"""The demo's corpus: where it is found, and turning it into a tokenizer and train/valid datasets."""

import pytest

from sa_megatron.data import default_corpus_dir, load_tokenizer, prepare_corpus
from sa_megatron.data import prepare
from sa_megatron.data.corpus import CorpusReader
from sa_megatron.data.indexed_dataset import IndexedDataset
from sa_megatron.errors import DataError


def test_resolution_order(shared_data, tmp_path, monkeypatch):
    monkeypatch.delenv("SA_MEGATRON_DATA", raising=False)
    assert default_corpus_dir().resolve() == shared_data.resolve()
    monkeypatch.setenv("SA_MEGATRON_DATA", str(tmp_path))
    assert default_corpus_dir() == tmp_path
    assert default_corpus_dir(shared_data) == shared_data
    with pytest.raises(DataError, match="no such folder"):
        default_corpus_dir(tmp_path / "absent")


def test_offline_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SA_MEGATRON_DATA", raising=False)
    monkeypatch.setattr(prepare, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(prepare, "TINYSHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")  # nothing listens there
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match="tinyshakespeare/input.txt: could not download"):
        default_corpus_dir()
    assert not (tmp_path / ".cache/sa-megatron/tinyshakespeare/input.txt").exists()


def test_an_empty_shared_folder_is_not_a_corpus(tmp_path, monkeypatch):
    # What Docker leaves when the bind-mounted ../shared/data is missing on the host: an empty folder.
    monkeypatch.delenv("SA_MEGATRON_DATA", raising=False)
    monkeypatch.setattr(prepare, "REPO_ROOT", tmp_path / "repo")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setattr(prepare, "TINYSHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match="could not download"):  # it goes on to the download instead
        default_corpus_dir()


def test_prepare_corpus_is_idempotent(shared_data, tmp_path):
    model, train, valid = prepare_corpus(tmp_path, shared_data, vocab_size=500, workers=1)
    train_text = (tmp_path / "shakespeare.train.txt").read_bytes()
    valid_text = (tmp_path / "shakespeare.valid.txt").read_bytes()
    original = (shared_data / "tinyshakespeare/input.txt").read_bytes()
    assert 0.89 < len(train_text) / len(original) < 0.91
    assert train_text.startswith(b"First Citizen:") and valid_text.rstrip().endswith(original.rstrip()[-40:])
    tokenizer = load_tokenizer(model)
    assert tokenizer.vocab_size == 500
    documents = CorpusReader([shared_data / "tinyshakespeare/input.txt"], doc_boundary="blank-line")
    assert len(IndexedDataset(train)) + len(IndexedDataset(valid)) == len(list(documents))
    stamps = [p.stat().st_mtime_ns for p in sorted(tmp_path.iterdir())]
    assert prepare_corpus(tmp_path, shared_data, vocab_size=500, workers=1) == (model, train, valid)
    assert [p.stat().st_mtime_ns for p in sorted(tmp_path.iterdir())] == stamps


def test_prepare_corpus_rebuilds_when_the_source_changes(shared_data, tmp_path):
    """Changing --data / $SA_MEGATRON_DATA must not reuse splits, tokenizers or datasets made from the old text."""
    original = (shared_data / "tinyshakespeare/input.txt").read_bytes()
    corpus = tmp_path / "corpora/tinyshakespeare/input.txt"
    corpus.parent.mkdir(parents=True)
    work = tmp_path / "work"

    def first_train_document(vocab_size):
        model, train, _ = prepare_corpus(work, corpus.parents[1], vocab_size=vocab_size, workers=1)
        return load_tokenizer(model).decode(IndexedDataset(train).get(0)[:-1])  # without the EOD

    for text in (original[:150_000], original[-150_000:]):
        corpus.write_bytes(text)
        expected = next(iter(CorpusReader([corpus], doc_boundary="blank-line")))
        assert first_train_document(500) == expected
        assert first_train_document(600) == expected  # a second tokenizer variant in the same folder
        assert (work / "shakespeare.train.txt").read_text().startswith(expected)
