"""The study's data: a tokenizer and training dataset from some books, and one whole held-out book for evaluation.

No run trains on the held-out book, and its tokens are evaluated at every length, so the ×1…×16 columns of the
report compare the same text. Documents are blank-line-separated paragraphs in both (the training split needs many
documents); the held-out stream is the book's paragraphs in order, each ended by EOD, exactly as `sa-megatron eval`
reads it.
"""

import hashlib
import json
from pathlib import Path

from sa_megatron.data.atomic import write_bytes_atomic
from sa_megatron.data.corpus import CorpusReader
from sa_megatron.data.prepare import made_from
from sa_megatron.data.preprocess import preprocess
from sa_megatron.data.tokenizer import train_tokenizer
from sa_megatron.errors import DataError


def prepare_study_corpus(work_dir: Path, train_files: list[Path], held_out: Path, vocab_size: int,
                         model_type: str = "bpe") -> tuple[Path, str, str]:
    """(tokenizer .model, train prefix, held-out prefix); reused when the stamp records the same inputs."""
    if held_out in train_files:
        raise DataError(f"{held_out}: the held-out book is also a training file; no run may train on it")
    digest = hashlib.sha256()
    for path in [*train_files, held_out]:
        digest.update(str(path.name).encode() + b"\0" + path.read_bytes())
    source = {"files": [str(p) for p in train_files], "held_out": str(held_out), "vocab_size": vocab_size,
              "model_type": model_type, "sha256": digest.hexdigest()}
    source["sha256"] = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()
    tokenizer = work_dir / "tokenizer.model"
    train_prefix, held_out_prefix = work_dir / "train", work_dir / "held_out"
    outputs = [tokenizer] + [Path(f"{p}{s}") for p in (train_prefix, held_out_prefix) for s in (".bin", ".idx")]
    stamp = work_dir / "source.json"
    if not made_from(source, stamp, outputs):
        work_dir.mkdir(parents=True, exist_ok=True)
        print(f"preparing the study corpus in {work_dir}: tokenizer ({vocab_size} pieces) and datasets", flush=True)
        train_tokenizer(CorpusReader(train_files, doc_boundary="blank-line"), work_dir / "tokenizer", vocab_size,
                        model_type)
        preprocess(train_files, tokenizer, train_prefix, workers=2, doc_boundary="blank-line", show_progress=False)
        preprocess([held_out], tokenizer, held_out_prefix, doc_boundary="blank-line", show_progress=False)
        write_bytes_atomic(stamp, json.dumps(source, indent=1).encode() + b"\n")  # last: it vouches for the rest
    return tokenizer, str(train_prefix), str(held_out_prefix)
