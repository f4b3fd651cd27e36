"""Tokenize corpus files into a Megatron dataset: PREFIX.bin + PREFIX.idx, plus a PREFIX.json sidecar.

Streaming: documents are read lazily, grouped into ~256 KB chunks, tokenized by a process pool with a
bounded window of chunks in flight, and written in input order, so memory is a few chunks, not the corpus.
The sidecar records which tokenizer (sha256, vocab size) made the ids, so datasets can be checked later.
`preprocess_split` writes PREFIX_train, PREFIX_valid and PREFIX_test instead, routing each document (or each
whole file) to its split as it streams by; each sidecar records the split.
"""

import collections
import contextlib
import json
import multiprocessing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sa_megatron.data.atomic import atomic_paths
from sa_megatron.data.corpus import CorpusReader
from sa_megatron.data.indexed_dataset import token_dtype, write_index
from sa_megatron.data.splits import (DEFAULT_SPLIT_SEED, SPLIT_NAMES, deal_files, interleave_splits,
                                     shares_text)
from sa_megatron.data.tokenizer import load_tokenizer
from sa_megatron.errors import DataError

CHUNK_CHARS = 1 << 18
CHUNKS_IN_FLIGHT_PER_WORKER = 2
SIDECAR_KEYS = ("vocab_size", "tokenizer_sha256")  # what readers of the sidecar rely on
SPLIT_BY = ("documents", "files")

_worker_tokenizer = None


@dataclass
class PreprocessSummary:
    documents: int
    tokens: int
    dtype: str
    vocab_size: int
    tokenizer_sha256: str
    skipped_invalid_utf8: int


@dataclass(frozen=True)
class HeldOutSplit:
    """How `preprocess_split` divides a corpus: train/valid/test shares, by "documents" or whole "files", seeded."""
    shares: tuple[float, float, float]
    by: str
    seed: int = DEFAULT_SPLIT_SEED

    def __post_init__(self):
        if self.by not in SPLIT_BY:
            raise DataError(f"split by {self.by!r}: expected one of {', '.join(SPLIT_BY)}")

    def record(self, name: str) -> dict:
        """What the sidecar of split `name` says about how it was made."""
        return {"name": name, "shares": list(self.shares), "by": self.by, "seed": self.seed}


@dataclass
class _Output:
    """One dataset being written: which split it takes, its prefix, the input files it is drawn from."""
    split: int
    prefix: str
    inputs: list
    sidecar_extra: dict


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


def _chunks(reader: CorpusReader, progress, route: Callable):
    """(documents, their splits) in lists of about CHUNK_CHARS characters; the progress bar follows the bytes read.

    route: the file index of each document in a chunk -> the split of each (called once per chunk, in order).
    """
    chunk, file_indices, chars = [], [], 0
    for file_index, document in reader.with_file_index():
        chunk.append(document)
        file_indices.append(file_index)
        chars += len(document)
        if chars >= CHUNK_CHARS:
            progress.update(reader.bytes_read - progress.n)
            yield chunk, route(np.array(file_indices))
            chunk, file_indices, chars = [], [], 0
    progress.update(reader.bytes_read - progress.n)
    if chunk:
        yield chunk, route(np.array(file_indices))


def _encoded_chunks(chunks, tokenizer_path, workers: int):
    """(tokens, document lengths, document splits) per chunk in input order; with workers > 1 a pool encodes a
    bounded window of chunks at once."""
    if workers <= 1:
        _load_worker_tokenizer(tokenizer_path)
        for documents, splits in chunks:
            yield *_encode_chunk(documents), splits
        return
    # spawn: forking a parent that may hold threads (torch, tqdm) can deadlock the children.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_load_worker_tokenizer, initargs=(str(tokenizer_path),)) as pool:
        pending = collections.deque()
        for documents, splits in chunks:
            pending.append((pool.apply_async(_encode_chunk, (documents,)), splits))
            if len(pending) >= CHUNKS_IN_FLIGHT_PER_WORKER * workers:
                encoding, splits = pending.popleft()
                yield *encoding.get(), splits
        while pending:
            encoding, splits = pending.popleft()
            yield *encoding.get(), splits


class _DocumentRouter:
    """The interleaved split of each document in corpus order. interleave_splits is prefix-stable, so it is
    computed ahead in doubling lengths while the corpus streams by, without counting the documents first."""

    def __init__(self, shares, seed: int):
        self.shares, self.seed = shares, seed
        self.splits = np.empty(0, dtype=np.int8)
        self.routed = 0

    def __call__(self, file_indices: np.ndarray) -> np.ndarray:
        end = self.routed + len(file_indices)
        if end > len(self.splits):
            self.splits = interleave_splits(max(end, 2 * len(self.splits)), self.shares, self.seed)
        splits, self.routed = self.splits[self.routed:end], end
        return splits


def preprocess(inputs, tokenizer_path, output_prefix, workers: int = 1, doc_boundary: str = "file",
               json_key: str = "text", skip_invalid_utf8: bool = False, show_progress=None) -> PreprocessSummary:
    reader = CorpusReader(inputs, doc_boundary, json_key, skip_invalid_utf8)
    output = _Output(0, str(output_prefix), reader.paths, {})
    return _write_datasets(reader, tokenizer_path, [output], _all_to_split_0, workers, show_progress)[0]


def _all_to_split_0(file_indices: np.ndarray) -> np.ndarray:
    return np.zeros(len(file_indices), dtype=np.int8)


def preprocess_split(inputs, tokenizer_path, output_prefix, split: HeldOutSplit, workers: int = 1,
                     doc_boundary: str = "file", json_key: str = "text", skip_invalid_utf8: bool = False,
                     show_progress=None) -> dict[str, PreprocessSummary]:
    """Write PREFIX_train, PREFIX_valid and PREFIX_test (splits with a zero share are left out), all or none.

    By "documents", every document is interleaved over the splits (see `interleave_splits`), so each split
    samples every file; by "files", whole files are dealt to the splits in a seeded order (see `deal_files`).
    """
    reader = CorpusReader(inputs, doc_boundary, json_key, skip_invalid_utf8)
    if split.by == "files":
        file_splits = deal_files(len(reader.paths), split.shares, split.seed)
        route = file_splits.__getitem__  # a document goes where its file goes
        inputs = [[path for path, to in zip(reader.paths, file_splits) if to == index] for index in range(3)]
    else:
        route = _DocumentRouter(split.shares, split.seed)
        inputs = [reader.paths] * 3  # every file feeds every split
    outputs = [_Output(index, f"{output_prefix}_{name}", inputs[index], {"split": split.record(name)})
               for index, (name, share) in enumerate(zip(SPLIT_NAMES, split.shares)) if share > 0]
    summaries = _write_datasets(reader, tokenizer_path, outputs, route, workers, show_progress)
    return {SPLIT_NAMES[output.split]: summary for output, summary in zip(outputs, summaries)}


def _write_datasets(reader: CorpusReader, tokenizer_path, outputs: list, route: Callable, workers: int,
                    show_progress) -> list[PreprocessSummary]:
    """Tokenize the reader's documents into each output's .bin/.idx/.json; `route` gives each document's split."""
    from tqdm import tqdm

    tokenizer = load_tokenizer(tokenizer_path)
    dtype = token_dtype(tokenizer.vocab_size)
    total_bytes = sum(path.stat().st_size for path in reader.paths)
    targets = [Path(f"{output.prefix}{suffix}") for output in outputs for suffix in (".bin", ".idx", ".json")]
    sizes = [[np.empty(0, dtype=np.int32)] for _ in outputs]
    with atomic_paths(*targets) as temps, \
            tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenize",
                 disable=None if show_progress is None else not show_progress) as progress:
        with contextlib.ExitStack() as streams:
            bins = [streams.enter_context(open(temp, "wb")) for temp in temps[0::3]]
            for flat, lengths, splits in _encoded_chunks(_chunks(reader, progress, route), tokenizer_path, workers):
                for output, bin_stream, output_sizes in zip(outputs, bins, sizes):
                    mine = splits == output.split
                    bin_stream.write(flat[np.repeat(mine, lengths)].tobytes())
                    output_sizes.append(lengths[mine])
        sizes = [np.concatenate(output_sizes) for output_sizes in sizes]
        for output, output_sizes in zip(outputs, sizes):
            _check_not_empty(output, len(output_sizes), sum(map(len, sizes)))
        summaries = []
        for output, output_sizes, idx_temp, json_temp in zip(outputs, sizes, temps[1::3], temps[2::3]):
            write_index(idx_temp, dtype, output_sizes)
            summary = PreprocessSummary(
                documents=len(output_sizes), tokens=int(output_sizes.sum(dtype=np.int64)), dtype=dtype.name,
                vocab_size=tokenizer.vocab_size, tokenizer_sha256=tokenizer.sha256,
                skipped_invalid_utf8=sum(reader.skipped.get(path, 0) for path in output.inputs),
            )
            json_temp.write_text(json.dumps({**asdict(summary), "eod_id": tokenizer.eod_id,
                                             "inputs": [str(p) for p in output.inputs], **output.sidecar_extra},
                                            indent=1) + "\n")
            summaries.append(summary)
    return summaries


def _check_not_empty(output: _Output, documents: int, total_documents: int) -> None:
    """A split with a share but none of too few documents is an error, raised before any output is kept."""
    if documents == 0:
        split = output.sidecar_extra["split"]
        raise DataError(f"--split {shares_text(split['shares'])} --split-by documents gives the {split['name']} "
                        f"split none of the {total_documents} documents; give it a larger share or more documents "
                        "(--doc-boundary line or blank-line makes more of them)")


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
