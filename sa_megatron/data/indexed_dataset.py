"""Megatron-LM's mmap indexed dataset format: PREFIX.bin (raw token ids) + PREFIX.idx (the index).

.idx layout, little-endian: 9-byte magic `MMIDIDX\\x00\\x00`, u64 version (1), u8 dtype code, u64 sequence
count N, u64 document-index count D (= documents + 1), int32 sizes[N], int64 byte pointers[N] into .bin,
int64 document_indices[D] (sequence index where each document starts, then N). Preprocess writes one
sequence per document, so sequence == document here; files from Megatron's own tools read the same way.
"""

import os
import struct
from pathlib import Path

import numpy as np

from sa_megatron.errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")
# Megatron's dtype codes for the integer types; its 6 and 7 (float64, float32) cannot hold token ids.
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
CODE_OF_DTYPE = {np.dtype(dtype): code for code, dtype in DTYPE_CODES.items()}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else int32."""
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)


def write_index(path, dtype, sizes: np.ndarray) -> None:
    """Write the .idx for documents of `sizes` tokens stored back to back in the .bin."""
    dtype = np.dtype(dtype)
    sizes = np.asarray(sizes, dtype=np.int32)
    pointers = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1], dtype=np.int64, out=pointers[1:])
    pointers *= dtype.itemsize
    document_indices = np.arange(len(sizes) + 1, dtype=np.int64)
    with open(path, "wb") as stream:
        stream.write(HEADER.pack(MAGIC, VERSION, CODE_OF_DTYPE[dtype], len(sizes), len(document_indices)))
        for array in (sizes, pointers, document_indices):
            stream.write(array.tobytes(order="C"))


class IndexedDataset:
    """Read-only, memory-mapped view of PREFIX.bin/.idx; `get(i, offset, length)` returns tokens of sequence i."""

    def __init__(self, prefix):
        self.prefix = str(prefix)
        idx_path, bin_path = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
        for path in (idx_path, bin_path):
            if not path.is_file():
                stem, suffix = os.path.splitext(self.prefix)
                hint = (f"give the dataset prefix without .bin/.idx: {stem}" if suffix in (".bin", ".idx")
                        else "expected a dataset written by `sa-megatron data preprocess`")
                raise DataError(f"{path}: no such file; {hint}")
        self._read_index(idx_path)
        # Megatron's .bin is exactly the documents back to back: any other size means a .bin from another run.
        needed = self.num_tokens * self.dtype.itemsize
        actual = bin_path.stat().st_size
        if actual != needed:
            raise DataError(
                f"{bin_path} holds {actual} bytes but {idx_path} describes {needed} ({self.num_tokens} "
                f"{self.dtype.name} tokens); the two files come from different preprocess runs or one is damaged; "
                "preprocess again"
            )
        self.tokens = np.memmap(bin_path, dtype=self.dtype, mode="r") if needed else np.empty(0, self.dtype)

    def _read_index(self, idx_path: Path) -> None:
        data = np.memmap(idx_path, dtype=np.uint8, mode="r") if idx_path.stat().st_size else b""
        if len(data) < HEADER.size:
            raise DataError(f"{idx_path}: truncated .idx ({len(data)} bytes, shorter than the {HEADER.size}-byte header)")
        magic, version, code, count, doc_count = HEADER.unpack(bytes(data[: HEADER.size]))
        if magic != MAGIC or version != VERSION:
            raise DataError(f"{idx_path}: not a Megatron mmap index (expected magic {MAGIC!r}, version {VERSION})")
        if code not in DTYPE_CODES:
            expected = ", ".join(f"{c} ({np.dtype(dtype).name})" for c, dtype in DTYPE_CODES.items())
            raise DataError(f"{idx_path}: dtype code {code} is not an integer token dtype; expected one of {expected}")
        expected = HEADER.size + count * (4 + 8) + doc_count * 8
        if len(data) < expected:
            raise DataError(f"{idx_path}: truncated .idx ({len(data)} bytes, the header promises {expected})")
        self.dtype = np.dtype(DTYPE_CODES[code])
        offset = HEADER.size
        self.sizes = np.frombuffer(data, np.int32, count, offset)
        self.pointers = np.frombuffer(data, np.int64, count, offset + 4 * count)
        self.document_indices = np.frombuffer(data, np.int64, doc_count, offset + 12 * count)
        if doc_count == 0 or self.document_indices[0] != 0 or self.document_indices[-1] != count:
            raise DataError(f"{idx_path}: corrupt document index (expected it to run from 0 to {count})")

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))

    def get(self, index: int, offset: int = 0, length=None) -> np.ndarray:
        start = int(self.pointers[index]) // self.dtype.itemsize + offset
        stop = start + (int(self.sizes[index]) - offset if length is None else length)
        return self.tokens[start:stop]
