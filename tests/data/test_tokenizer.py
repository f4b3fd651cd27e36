"""Tokenizers round-trip every real corpus exactly (after BOM removal and CRLF -> LF), BPE and unigram."""

import hashlib
import json

import pytest

from sa_megatron.data.corpus import CorpusReader
from sa_megatron.data.tokenizer import load_tokenizer, train_tokenizer
from sa_megatron.errors import DataError

TRICKY = [
    "", " leading and trailing  ", "\n\n\nnewlines\n", "tabs\tand\u00a0nbsp", "digits 1234567890 3.14",
    "literal space marker \u2581 and \u2581\u2581", "<unk> <s> </s> <pad> look like specials", "emoji 🙂 漢字 é ñ",
    "lone\rcarriage return",
]


def corpus_files(shared_data):
    return sorted(p for p in shared_data.rglob("*") if p.is_file() and p.name not in ("README.md", "SHA256SUMS"))


def test_bpe_round_trips_every_shared_corpus(bpe_model, shared_data):
    tokenizer = load_tokenizer(bpe_model)
    files = corpus_files(shared_data)
    assert len(files) == 12
    for path in files:
        expected = path.read_bytes().decode("utf-8-sig").replace("\r\n", "\n")
        (document,) = CorpusReader([path])
        assert document == expected
        assert tokenizer.decode(tokenizer.encode(document)) == expected, path


def test_unigram_round_trips(shared_data, gutenberg_files, tmp_path):
    model = train_tokenizer(CorpusReader(gutenberg_files[:2]), tmp_path / "uni", 600, "unigram",
                            input_sentence_size=3000)
    tokenizer = load_tokenizer(model)
    for path in [shared_data / "scientific/hott-book/introduction.tex", gutenberg_files[1]]:
        (document,) = CorpusReader([path])
        assert tokenizer.decode(tokenizer.encode(document)) == document
    for text in TRICKY:
        assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("text", TRICKY)
def test_bpe_round_trips_tricky_text(bpe_model, text):
    tokenizer = load_tokenizer(bpe_model)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_encoding_by_line_matches_whole_text(bpe_model, gutenberg_files):
    tokenizer = load_tokenizer(bpe_model)
    text = gutenberg_files[1].read_bytes()[:20000].decode("utf-8-sig").replace("\r\n", "\n")
    assert tokenizer.encode(text) == tokenizer._sp.encode(text)


def test_special_ids_size_and_hash(bpe_model):
    tokenizer = load_tokenizer(bpe_model)
    assert tokenizer.vocab_size == 1000
    assert (tokenizer.eod_id, tokenizer.pad_id) == (2, 3)
    assert tokenizer.sha256 == hashlib.sha256(bpe_model.read_bytes()).hexdigest()
    assert tokenizer.eod_id not in tokenizer.encode("no eod inside\n")


def test_trains_from_jsonl_with_bom_and_crlf(tmp_path, gutenberg_files):
    lines = gutenberg_files[0].read_bytes().decode("utf-8-sig").splitlines()[:3000]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps({"text": line}) for line in lines if line).encode())
    tokenizer = load_tokenizer(train_tokenizer(CorpusReader([jsonl]), tmp_path / "j", 400, "bpe"))
    assert tokenizer.decode(tokenizer.encode("\n".join(lines))) == "\n".join(lines)


def test_existing_model_loads_as_is(tmp_path, gutenberg_files):
    """A model trained with sentencepiece's defaults (NFKC, dummy prefix) is used unchanged."""
    import sentencepiece

    lines = gutenberg_files[0].read_text(encoding="utf-8-sig").splitlines()[:3000]
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(l for l in lines if l), vocab_size=300,
                                             model_prefix=str(tmp_path / "plain"), minloglevel=2)
    plain = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "plain.model"))
    tokenizer = load_tokenizer(tmp_path / "plain.model")
    assert tokenizer.eod_id == plain.eos_id() and tokenizer.vocab_size == 300
    assert tokenizer.encode("Hello  world\nagain") == plain.encode("Hello  world\nagain")


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(DataError, match="no such tokenizer file"):
        load_tokenizer(tmp_path / "missing.model")
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"this is not a protobuf")
    with pytest.raises(DataError, match=f"{garbage}: not a sentencepiece model"):
        load_tokenizer(garbage)


def test_vocab_too_large_for_corpus(tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("a few words only\n")
    with pytest.raises(DataError, match="sentencepiece training failed"):
        train_tokenizer(CorpusReader([tiny]), tmp_path / "t", 5000, "bpe")


def test_corpus_error_during_training_surfaces_as_itself(tmp_path, gutenberg_files):
    """A reader error after the first document is raised inside sentencepiece's iterator; it must not be hidden."""
    lines = gutenberg_files[0].read_text(encoding="utf-8-sig").splitlines()[:2000]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": line}) for line in lines if line) + '\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=f"{jsonl}: the JSON line at byte offset \\d+ has no string field 'text'"):
        train_tokenizer(CorpusReader([jsonl]), tmp_path / "t", 300, "bpe")
    assert not (tmp_path / "t.model").exists()


@pytest.mark.parametrize("vocab_size", [0, -5, 100])
def test_vocab_size_below_the_byte_pieces_is_refused_up_front(tmp_path, vocab_size):
    corpus = tmp_path / "c.txt"
    corpus.write_text("text\n")
    with pytest.raises(DataError, match=f"tokenizer vocab size {vocab_size} is too small; expected at least 262"):
        train_tokenizer(CorpusReader([corpus]), tmp_path / "t", vocab_size, "bpe")


@pytest.mark.parametrize("size", [0, -1])
def test_input_sentence_size_must_be_positive(tmp_path, size):
    corpus = tmp_path / "c.txt"
    corpus.write_text("text\n")
    with pytest.raises(DataError, match=f"input sentence size {size}: expected a positive number of lines"):
        train_tokenizer(CorpusReader([corpus]), tmp_path / "t", 300, "bpe", input_sentence_size=size)


def test_unwritable_output_fails_before_training(tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("a few words only\n")  # training itself would fail: too few pieces for the vocabulary
    with pytest.raises(DataError, match=f"{tiny}/t.model: cannot write there .File exists: {tiny}."):
        train_tokenizer(CorpusReader([tiny]), tiny / "t", 5000, "bpe")
