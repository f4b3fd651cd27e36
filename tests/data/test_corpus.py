"""Reading documents: boundaries, the BOM/CRLF normalization, JSONL, and bad input naming the file."""

import json

import pytest

from sa_megatron.data.corpus import CorpusReader
from sa_megatron.errors import DataError


def read(path, **options):
    return list(CorpusReader([path], **options))


def test_document_boundaries(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("one\ntwo\n\n\nthree  \n \nfour\n")
    assert read(path) == ["one\ntwo\n\n\nthree  \n \nfour\n"]
    assert read(path, doc_boundary="line") == ["one", "two", "three  ", "four"]
    assert read(path, doc_boundary="blank-line") == ["one\ntwo", "three  ", "four"]


def test_bom_and_crlf_are_the_only_normalization(tmp_path):
    path = tmp_path / "windows.txt"
    path.write_bytes(b"\xef\xbb\xbfline one\r\n\r\nline\ttwo \xc3\xa9\r\nlone\rcarriage\r\n")
    assert read(path) == ["line one\n\nline\ttwo é\nlone\rcarriage\n"]
    assert read(path, doc_boundary="blank-line") == ["line one", "line\ttwo é\nlone\rcarriage"]
    path.write_bytes(b"ends in CR\r\r\nnext\r\n")
    assert read(path, doc_boundary="line") == ["ends in CR\r", "next"]


def test_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": "first\r\ndoc"}), "", json.dumps({"body": "x", "text": "second ▁"})]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    assert read(path) == ["first\ndoc", "second ▁"]
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"body": "b"}) + "\n")
    assert read(other, json_key="body") == ["b"]


@pytest.mark.parametrize("content, message", [
    (b'{"text": "ok"}\n{"text": \n', "invalid JSON at byte offset 15"),
    (b'{"text": "ok"}\n{"body": "x"}\n', "no string field 'text'"),
])
def test_bad_jsonl_names_file_and_offset(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read(path)
    assert str(path) in str(err.value)


def test_invalid_utf8_names_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"good line\n\ncaf\xe9 au lait\n")
    with pytest.raises(DataError, match=r"invalid UTF-8 at byte offset 14") as err:
        read(path, doc_boundary="blank-line")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_skip_invalid_utf8_counts_skipped_documents(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"good\n\xff bad\nalso good\n\xfe\n")
    reader = CorpusReader([path], doc_boundary="line", skip_invalid_utf8=True)
    assert list(reader) == ["good", "also good"]
    assert reader.skipped == {path: 2}


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), (b"", "file is empty"), (b"\n \n\n", "no documents"),
])
def test_missing_empty_or_blank_file(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read(path, doc_boundary="line")
    assert str(path) in str(err.value)


@pytest.mark.parametrize("boundary", ["file", "line", "blank-line"])
def test_bytes_read_reaches_the_total_size(tmp_path, boundary):
    # What the preprocess progress bar follows: BOMs, CRLFs and blank lines count too, so it ends at 100%.
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_bytes(b"\xef\xbb\xbfone\r\ntwo\r\n\r\n\r\nthree\r\n")
    second.write_bytes(b"\n\nfour\nfive")
    reader = CorpusReader([first, second], doc_boundary=boundary)
    seen = []
    for _ in reader:
        seen.append(reader.bytes_read)
    assert seen == sorted(seen)
    assert reader.bytes_read == first.stat().st_size + second.stat().st_size
