"""Read documents from text and JSONL corpus files, streaming, with one documented normalization.

Normalization (the only change made to text): a UTF-8 BOM at the start of a file is dropped and CRLF
line endings become LF. Everything else, including whitespace, is kept byte for byte.

Document boundaries for plain text: "file" (the whole file is one document), "line" (each non-blank
line), "blank-line" (paragraphs separated by blank lines). A JSONL file (`.jsonl`/`.json`) holds one
JSON object per line; its document is the string under `json_key`. Blank means empty or whitespace only.
"""

import json
from pathlib import Path
from typing import Iterator

from sa_megatron.errors import DataError

DOC_BOUNDARIES = ("file", "line", "blank-line")
JSONL_SUFFIXES = (".jsonl", ".json")
BOM = b"\xef\xbb\xbf"


def strip_line_end(line: bytes) -> bytes:
    """Drop one LF or CRLF terminator; other carriage returns are text and stay."""
    return line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith(b"\n") else line


def check_input_files(paths) -> list[Path]:
    """Fail before any work starts if an input is missing or empty."""
    if not paths:
        raise DataError("no input files given; expected at least one text or JSONL file")
    checked = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"{path}: no such file; expected a text or JSONL corpus file")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: file is empty; expected at least one document")
        checked.append(path)
    return checked


class CorpusReader:
    """Iterate over the documents of several files in order; `skipped` counts invalid-UTF-8 documents per file."""

    def __init__(self, paths, doc_boundary="file", json_key="text", skip_invalid_utf8=False):
        if doc_boundary not in DOC_BOUNDARIES:
            raise DataError(f"document boundary {doc_boundary!r} is not one of {', '.join(DOC_BOUNDARIES)}")
        self.paths = check_input_files(paths)
        self.doc_boundary = doc_boundary
        self.json_key = json_key
        self.skip_invalid_utf8 = skip_invalid_utf8
        self.skipped: dict[Path, int] = {}
        self.bytes_read = 0  # input bytes consumed so far, for progress bars; the total size once iterated

    def __iter__(self) -> Iterator[str]:
        return (text for _, text in self.with_file_index())

    def with_file_index(self) -> Iterator[tuple[int, str]]:
        """(index in `paths` of the file it came from, text) per document."""
        finished_bytes = 0
        for file_index, path in enumerate(self.paths):
            count = 0
            for raw, offset in self._raw_documents(path):
                self.bytes_read = finished_bytes + offset + len(raw)
                text = self._decode(path, raw, offset)
                if text is None:
                    continue
                if path.suffix in JSONL_SUFFIXES:
                    text = self._json_document(path, text, offset)
                count += 1
                yield file_index, text.replace("\r\n", "\n")
            if count == 0:
                skipped = self.skipped.get(path, 0)
                why = f"all {skipped} were skipped for invalid UTF-8" if skipped else "it holds only blank lines"
                raise DataError(f"{path}: no documents ({why}); expected at least one")
            finished_bytes += path.stat().st_size
            self.bytes_read = finished_bytes

    def _raw_documents(self, path: Path) -> Iterator[tuple[bytes, int]]:
        """(raw bytes, byte offset in the file) per document, before decoding."""
        with open(path, "rb") as stream:
            if self.doc_boundary == "file" and path.suffix not in JSONL_SUFFIXES:
                data = stream.read()
                start = len(BOM) if data.startswith(BOM) else 0
                if data[start:].strip():
                    yield data[start:], start
                return
            per_line = self.doc_boundary == "line" or path.suffix in JSONL_SUFFIXES
            offset, paragraph, paragraph_start = 0, [], 0
            for line in stream:
                line_start = offset
                offset += len(line)
                if line_start == 0 and line.startswith(BOM):
                    line, line_start = line[len(BOM):], len(BOM)
                if not line.strip():
                    if paragraph:
                        yield strip_line_end(b"".join(paragraph)), paragraph_start
                        paragraph = []
                elif per_line:
                    yield strip_line_end(line), line_start
                else:
                    if not paragraph:
                        paragraph_start = line_start
                    paragraph.append(line)
            if paragraph:
                yield strip_line_end(b"".join(paragraph)), paragraph_start

    def _decode(self, path: Path, raw: bytes, offset: int):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if self.skip_invalid_utf8:
                self.skipped[path] = self.skipped.get(path, 0) + 1
                return None
            raise DataError(
                f"{path}: invalid UTF-8 at byte offset {offset + err.start}; expected UTF-8 text "
                "(pass --skip-invalid-utf8 to skip such documents)"
            ) from None

    def _json_document(self, path: Path, line: str, offset: int) -> str:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}: invalid JSON at byte offset {offset} ({err.msg}); expected one object per line"
            ) from None
        text = record.get(self.json_key) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataError(
                f"{path}: the JSON line at byte offset {offset} has no string field {self.json_key!r} (see --json-key)"
            )
        return text
