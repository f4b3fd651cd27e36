"""Tokenize corpus files into a Megatron dataset: PREFIX.bin + PREFIX.idx, plus a PREFIX.json sidecar.

Streaming: documents are read lazily, grouped into ~256 KB chunks, tokenized by a process pool with a
bounded window of chunks in flight, and written in input order, so memory is a few chunks, not the corpus.
The sidecar records which tokenizer (sha256, vocab size) made the ids, so datasets can be checked later.
"""

import collections
import json
import multiprocessing
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sa_megatron.data.atomic import atomic_paths
from sa_megatron.data.corpus import CorpusReader
from sa_megatron.data.indexed_dataset import token_dtype, write_index
from sa_megatron.data.tokenizer import load_tokenizer
from sa_megatron.errors import DataError

CHUNK_CHARS = 1 << 18
CHUNKS_IN_FLIGHT_PER_WORKER = 2
SIDECAR_KEYS = ("vocab_size", "tokenizer_sha256")  # what readers of the sidecar rely on

_worker_tokenizer = None


@dataclass
class PreprocessSummary:
    documents: int
    tokens: int
    dtype: str
    vocab_size: int
    tokenizer_sha256: str
    skipped_invalid_utf8: int


def _load_worker_tokenizer(path) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(path)


def _encode_chunk(documents: list[str]):
    """Token ids of every document, each followed by EOD, as one flat array plus per-document lengths."""
    encoded = _worker_tokenizer.encode_batch(documents)
    lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int32, count=len(encoded))
    flat = np.empty(int(lengths.sum(dtype=np.int64)), dtype=token_dtype(_worker_tokenizer.vocab_size))
    ends = np.cumsum(lengths)
    for ids, end in zip(encoded, ends):
        flat[end - len(ids) - 1: end - 1] = ids
    flat[ends - 1] = _worker_tokenizer.eod_id
    return flat, lengths


def _chunks(reader: CorpusReader, progress):
    """The reader's documents in lists of about CHUNK_CHARS characters; the progress bar follows the bytes read."""
    chunk, chars = [], 0
    for document in reader:
        chunk.append(document)
        chars += len(document)
        if chars >= CHUNK_CHARS:
            progress.update(reader.bytes_read - progress.n)
            yield chunk
            chunk, chars = [], 0
    progress.update(reader.bytes_read - progress.n)
    if chunk:
        yield chunk


def _encoded_chunks(chunks, tokenizer_path, workers: int):
    """Encoded chunks in input order; with workers > 1 a pool encodes a bounded window of chunks at once."""
    if workers <= 1:
        _load_worker_tokenizer(tokenizer_path)
        yield from map(_encode_chunk, chunks)
        return
    # spawn: forking a parent that may hold threads (torch, tqdm) can deadlock the children.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_load_worker_tokenizer, initargs=(str(tokenizer_path),)) as pool:
        pending = collections.deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_chunk, (chunk,)))
            if len(pending) >= CHUNKS_IN_FLIGHT_PER_WORKER * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def preprocess(inputs, tokenizer_path, output_prefix, workers: int = 1, doc_boundary: str = "file",
               json_key: str = "text", skip_invalid_utf8: bool = False, show_progress=None) -> PreprocessSummary:
    from tqdm import tqdm

    tokenizer = load_tokenizer(tokenizer_path)
    reader = CorpusReader(inputs, doc_boundary, json_key, skip_invalid_utf8)
    dtype = token_dtype(tokenizer.vocab_size)
    total_bytes = sum(path.stat().st_size for path in reader.paths)
    targets = [Path(f"{output_prefix}{suffix}") for suffix in (".bin", ".idx", ".json")]
    sizes = []
    with atomic_paths(*targets) as (bin_temp, idx_temp, json_temp), \
            tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenize",
                 disable=None if show_progress is None else not show_progress) as progress:
        with open(bin_temp, "wb") as bin_stream:
            for flat, lengths in _encoded_chunks(_chunks(reader, progress), tokenizer_path, workers):
                bin_stream.write(flat.tobytes())
                sizes.append(lengths)
        sizes = np.concatenate(sizes)
        write_index(idx_temp, dtype, sizes)
        summary = PreprocessSummary(
            documents=len(sizes), tokens=int(sizes.sum(dtype=np.int64)), dtype=dtype.name,
            vocab_size=tokenizer.vocab_size, tokenizer_sha256=tokenizer.sha256,
            skipped_invalid_utf8=sum(reader.skipped.values()),
        )
        json_temp.write_text(json.dumps({**asdict(summary), "eod_id": tokenizer.eod_id,
                                         "inputs": [str(p) for p in reader.paths]}, indent=1) + "\n")
    return summary


def read_sidecar(prefix):
    """PREFIX.json written by preprocess, or None for datasets made by other tools."""
    path = Path(f"{prefix}.json")
    if not path.is_file():
        return None
    try:
        sidecar = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a preprocess sidecar ({err}); delete it or preprocess again") from None
    missing = [key for key in SIDECAR_KEYS if key not in sidecar] if isinstance(sidecar, dict) else SIDECAR_KEYS
    if missing:
        raise DataError(f"{path}: not a preprocess sidecar (no {', '.join(missing)}); delete it or preprocess again")
    return sidecar
