"""Sentencepiece tokenizer: train one that round-trips text exactly, or load any existing `.model` as-is.

Models we train use identity normalization, no dummy prefix, no whitespace collapsing, split digits and
byte fallback, so `decode(encode(text)) == text` for any text (after the corpus normalization: BOM removed,
CRLF -> LF). "\n" is a user-defined piece, so pieces never cross lines and long documents are encoded line
by line (same ids, ~3x faster for BPE). Sentencepiece reads a literal U+2581 ("▁") as its space marker,
so we encode that character as its three UTF-8 byte pieces instead.
"""

import hashlib
import io
import os
import re
from pathlib import Path

from sa_megatron.data.atomic import atomic_paths
from sa_megatron.errors import DataError

SPECIAL_IDS = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": 3}
SPACE_MARKER = "\u2581"
SPACE_MARKER_BYTE_PIECES = ("<0xE2>", "<0x96>", "<0x81>")
ROUND_TRIP_PROBE_BATCH = [" a\n\n b  c\t1234\n\u2581x\u2581 é\n"]
SEPARATORS = re.compile("(\n|\u2581)")
MIN_VOCAB_SIZE = 256 + len(SPECIAL_IDS) + 2  # byte-fallback pieces, special ids, "\n", at least one character


def model_sha256(model_bytes: bytes) -> str:
    """A tokenizer's identity, as checkpoints and dataset sidecars record it: the sha256 of its .model file."""
    return hashlib.sha256(model_bytes).hexdigest()


class Tokenizer:
    """A loaded sentencepiece model. `vocab_size` is the real size; the model pads it for tensor parallelism."""

    def __init__(self, model_bytes: bytes, source: str):
        import sentencepiece

        self.source = source
        self.sha256 = model_sha256(model_bytes)
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_bytes)
        except (RuntimeError, OSError) as err:
            raise DataError(f"{source}: not a sentencepiece model ({str(err).splitlines()[0]})") from None
        self.vocab_size = self._sp.vocab_size()
        self.eod_id = self._sp.eos_id()
        if self.eod_id < 0:
            raise DataError(f"{source}: the tokenizer has no EOS piece; expected one to mark end of document")
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eod_id
        self._separator_ids = self._exact_separator_ids()

    def _exact_separator_ids(self):
        """Ids of the separators ("\n", "▁") when this model round-trips text split at them, else None.

        Holds for models trained here; foreign models (dummy prefix, NFKC, ...) are encoded whole, as-is.
        """
        ids = {"\n": [self._sp.piece_to_id("\n")], SPACE_MARKER: [self._sp.piece_to_id(p) for p in SPACE_MARKER_BYTE_PIECES]}
        if any(i == self._sp.unk_id() for separator in ids.values() for i in separator):
            return None
        exact = self.decode(self._encode_split(ROUND_TRIP_PROBE_BATCH, ids)[0]) == ROUND_TRIP_PROBE_BATCH[0]
        return ids if exact else None

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._separator_ids is None:
            return self._sp.encode(texts, num_threads=1)
        return self._encode_split(texts, self._separator_ids)

    def _encode_split(self, texts, separator_ids) -> list[list[int]]:
        """Encode the text between separators in one sentencepiece call, then put the separators' ids back."""
        splits = [SEPARATORS.split(text) for text in texts]
        encoded = iter(self._sp.encode([s for parts in splits for s in parts[::2]], num_threads=1))
        result = []
        for parts in splits:
            ids = list(next(encoded))
            for separator in parts[1::2]:
                ids += separator_ids[separator]
                ids += next(encoded)
            result.append(ids)
        return result

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])


def load_tokenizer(path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such tokenizer file; expected a sentencepiece .model")
    return Tokenizer(path.read_bytes(), str(path))


def training_sentences(documents):
    """Sentencepiece learns pieces within a "sentence"; ours are the non-empty lines of each document."""
    for document in documents:
        for line in document.split("\n"):
            if line:
                yield line


def remembering_errors(iterator, errors: list):
    """Iterate, appending any exception to `errors` before re-raising it.

    Sentencepiece turns an exception in its sentence iterator into a RuntimeError whose text is a stack dump;
    this keeps the original (say, the corpus reader's DataError naming the bad line) so it can be raised instead.
    """
    try:
        yield from iterator
    except Exception as err:
        errors.append(err)
        raise


def train_tokenizer(documents, output_prefix, vocab_size: int, model_type: str = "bpe",
                    input_sentence_size: int = 1_000_000, seed: int = 0) -> Path:
    """Train on an iterable of documents; write PREFIX.model atomically and return its path.

    Memory and time stay bounded: at most `input_sentence_size` lines are kept (a uniform sample of the
    corpus, since sentencepiece reservoir-samples when shuffling).
    """
    import sentencepiece

    if model_type not in ("bpe", "unigram"):
        raise DataError(f"tokenizer model type {model_type!r} is not one of bpe, unigram")
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"tokenizer vocab size {vocab_size} is too small; expected at least {MIN_VOCAB_SIZE} "
                        "(256 byte-fallback pieces, 4 special ids, the newline piece and one character)")
    if input_sentence_size < 1:
        raise DataError(f"input sentence size {input_sentence_size}: expected a positive number of lines to sample")
    sentencepiece.set_random_generator_seed(seed)
    model = io.BytesIO()
    model_path = Path(f"{output_prefix}.model")
    reader_errors = []
    with atomic_paths(model_path) as (temp,):  # entered first, so an unwritable output fails before training
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=remembering_errors(training_sentences(documents), reader_errors), model_writer=model,
                vocab_size=vocab_size, model_type=model_type, **SPECIAL_IDS,
                normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
                split_digits=True, byte_fallback=True, user_defined_symbols=["\n"], allow_whitespace_only_pieces=True,
                input_sentence_size=input_sentence_size, shuffle_input_sentence=True, max_sentence_length=1 << 16,
                train_extremely_large_corpus=False, num_threads=os.cpu_count() or 1, minloglevel=2,
            )
        except RuntimeError as err:
            if reader_errors:
                raise reader_errors[0] from None
            message = str(err).strip().splitlines()[-1]
            raise DataError(f"{model_path}: sentencepiece training failed: {message}") from None
        temp.write_bytes(model.getvalue())
    return model_path
