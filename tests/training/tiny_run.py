"""A tiny corpus (real sentencepiece tokenizer + Megatron .bin/.idx) and a tiny run config for the training tests."""

from pathlib import Path

from sa_megatron.config import from_dict

SHAKESPEARE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
CORPUS_CHARS = 60_000  # ~1,000 documents of short dialogue: plenty of samples at seq_length 32


def corpus_text() -> str:
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8")[:CORPUS_CHARS]
    # Machines without the shared corpus still get varied, tokenizable text.
    words = ["speak", "citizen", "famish", "resolved", "people", "enemy", "chief", "know", "proceed", "hear"]
    return "\n\n".join(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(1500))


def make_corpus(work_dir: Path) -> tuple[Path, str]:
    """(tokenizer .model, dataset prefix) built by the data package's own tokenizer trainer and preprocessor."""
    from sa_megatron.data.corpus import CorpusReader
    from sa_megatron.data.preprocess import preprocess
    from sa_megatron.data.tokenizer import train_tokenizer

    text = work_dir / "corpus.txt"
    text.write_text(corpus_text(), encoding="utf-8")
    tokenizer = train_tokenizer(CorpusReader([text], doc_boundary="blank-line"), work_dir / "tok", vocab_size=320)
    prefix = work_dir / "corpus"
    preprocess([text], tokenizer, prefix, doc_boundary="blank-line", show_progress=False)
    return tokenizer, str(prefix)


def tiny_config_dict(tokenizer, prefix, **sections) -> dict:
    """A 2-layer, width-64 model on 32-token sequences, fp32, 4 sequences per step; `sections` override."""
    raw = {
        "model": {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "seq_length": 32,
                  "attention_backend": "eager", "make_vocab_size_divisible_by": 32},
        "data": {"paths": [prefix], "split": "90,10,0"},
        "tokenizer": {"model": str(tokenizer)},
        "optimizer": {"lr": 1e-3, "min_lr": 1e-4},
        "schedule": {"warmup_iters": 2, "decay_iters": 10},
        "training": {"train_iters": 4, "micro_batch_size": 2, "global_batch_size": 4, "eval_interval": 0},
        "logging": {"log_interval": 2},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def tiny_config(tokenizer, prefix, **sections):
    return from_dict(tiny_config_dict(tokenizer, prefix, **sections))
