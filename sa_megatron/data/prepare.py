"""Where the demo's text comes from, and turning it into a tokenizer plus train/valid datasets."""

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from sa_megatron.config.schema import TokenizerConfig
from sa_megatron.data.atomic import write_bytes_atomic
from sa_megatron.data.corpus import CorpusReader
from sa_megatron.data.preprocess import preprocess
from sa_megatron.data.tokenizer import train_tokenizer
from sa_megatron.errors import DataError

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE = Path("tinyshakespeare") / "input.txt"
REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_FRACTION = 0.9


def default_corpus_dir(explicit=None) -> Path:
    """The folder holding the corpora: explicit, else $SA_MEGATRON_DATA, else ../shared/data when it holds
    tinyshakespeare, else a download."""
    for candidate, origin in ((explicit, "the given corpus folder"), (os.environ.get("SA_MEGATRON_DATA"), "$SA_MEGATRON_DATA")):
        if candidate:
            if not Path(candidate).is_dir():
                raise DataError(f"{candidate}: no such folder ({origin}); expected a folder of corpora")
            return Path(candidate)
    shared = REPO_ROOT.parent / "shared" / "data"
    # The file, not just the folder: Docker creates a missing bind-mount source as an empty folder.
    if (shared / TINYSHAKESPEARE).is_file():
        return shared
    return download_tinyshakespeare()


def download_tinyshakespeare() -> Path:
    cache = Path.home() / ".cache" / "sa-megatron"
    target = cache / TINYSHAKESPEARE
    if not target.is_file():
        try:
            with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=30) as response:
                write_bytes_atomic(target, response.read())
        except (urllib.error.URLError, OSError) as err:
            raise DataError(
                f"{target}: could not download tinyshakespeare from {TINYSHAKESPEARE_URL} ({err}); "
                "set SA_MEGATRON_DATA to a folder holding tinyshakespeare/input.txt"
            ) from None
    return cache


def split_train_valid(corpus: Path, train_path: Path, valid_path: Path) -> None:
    """nanoGPT's split, first 90% of the bytes for train, moved to the nearest following document boundary."""
    documents = list(CorpusReader([corpus], doc_boundary="blank-line"))
    sizes = [len(document.encode("utf-8")) + 2 for document in documents]
    target, total, cut = TRAIN_FRACTION * sum(sizes), 0, 0
    while cut < len(documents) - 1 and total < target:
        total += sizes[cut]
        cut += 1
    for path, part in ((train_path, documents[:cut]), (valid_path, documents[cut:])):
        write_bytes_atomic(path, ("\n\n".join(part) + "\n").encode("utf-8"))


def prepare_corpus(work_dir, source_dir=None, vocab_size: int = TokenizerConfig.vocab_size, model_type: str = "bpe",
                   workers: int = 2):
    """(tokenizer .model, train prefix, valid prefix) for tinyshakespeare.

    Outputs are reused when a `.source.json` beside them says they were made from the same corpus content
    (its sha256), so a rerun skips the work, while a changed --data / $SA_MEGATRON_DATA rebuilds them.
    """
    work_dir = Path(work_dir)
    corpus = default_corpus_dir(source_dir) / TINYSHAKESPEARE
    if not corpus.is_file():
        raise DataError(f"{corpus}: no such file; expected the tinyshakespeare corpus in the corpus folder")
    source = {"source": str(corpus), "sha256": hashlib.sha256(corpus.read_bytes()).hexdigest()}
    source_record = json.dumps(source, indent=1).encode() + b"\n"
    train_text, valid_text = work_dir / "shakespeare.train.txt", work_dir / "shakespeare.valid.txt"
    texts_stamp = work_dir / "shakespeare.source.json"
    if not made_from(source, texts_stamp, [train_text, valid_text]):
        split_train_valid(corpus, train_text, valid_text)
        write_bytes_atomic(texts_stamp, source_record)
    name = f"shakespeare-{model_type}-{vocab_size}"
    tokenizer = work_dir / f"{name}.model"
    prefixes = [work_dir / f"{name}-{split}" for split in ("train", "valid")]
    outputs = [tokenizer] + [Path(f"{prefix}{suffix}") for prefix in prefixes for suffix in (".bin", ".idx", ".json")]
    stamp = work_dir / f"{name}.source.json"
    if not made_from(source, stamp, outputs):
        train_tokenizer(CorpusReader([train_text], doc_boundary="blank-line"), work_dir / name, vocab_size, model_type)
        for prefix, text in zip(prefixes, (train_text, valid_text)):
            preprocess([text], tokenizer, prefix, workers=workers, doc_boundary="blank-line", show_progress=False)
        write_bytes_atomic(stamp, source_record)  # last: it vouches for the files written before it
    return tokenizer, str(prefixes[0]), str(prefixes[1])


def made_from(source: dict, stamp: Path, outputs) -> bool:
    """Whether every output exists and `stamp` records the same source content (an unreadable stamp: no)."""
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded.get("sha256") == source["sha256"] and all(
        Path(path).is_file() for path in outputs)
