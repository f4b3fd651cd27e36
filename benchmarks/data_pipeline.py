"""Data pipeline speed, printed as tables: tokenization throughput by worker count, index building at scale.

Tokenization: `preprocess` of the Gutenberg books (blank-line documents) with 1, 2 and N workers; MB/s is
input bytes over wall time, process start-up included; CPU s (this process plus its workers) shows how
much of the wall time was spent computing, which matters on a shared machine. Index building: a synthetic
size table (lognormal document lengths, ~1B tokens by default) written as a real .idx with a sparse .bin, then
GPTDataset's document/sample/shuffle indices built cold (and cached) and loaded warm, plus a blending index.

    python -m benchmarks.data_pipeline                     # from the repository root
    python -m benchmarks.data_pipeline --tokens 1e8 --workers 1 2
"""
import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from sa_megatron.data import build_gpt_datasets, default_corpus_dir
from sa_megatron.data.corpus import CorpusReader
from sa_megatron.data.indexed_dataset import write_index
from sa_megatron.data.preprocess import preprocess
from sa_megatron.data.sample_index import build_blending_index, samples_per_epoch
from sa_megatron.data.tokenizer import train_tokenizer


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="corpus folder (default: the resolved default corpus folder)")
    parser.add_argument("--tokenizer", help="sentencepiece .model (default: train BPE on the books)")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, 2, os.cpu_count() or 1}))
    parser.add_argument("--tokens", type=float, default=1e9, help="synthetic dataset size for index building")
    parser.add_argument("--documents", type=float, default=1e6)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--blend-samples", type=float, default=5e6)
    return parser.parse_args()


def cpu_seconds() -> float:
    return sum(usage.ru_utime + usage.ru_stime for usage in
               (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def tokenization_table(books, tokenizer, worker_counts, work_dir):
    total = sum(book.stat().st_size for book in books)
    print(f"\nTokenization: {len(books)} Gutenberg books, {total / 1e6:.1f} MB, blank-line documents")
    print(f"{'workers':>8} {'seconds':>8} {'MB/s':>7} {'CPU s':>7} {'tokens':>10} {'speedup':>8}")
    baseline = None
    for workers in worker_counts:
        start, cpu_start = time.perf_counter(), cpu_seconds()
        summary = preprocess(books, tokenizer, work_dir / f"books-{workers}", workers=workers,
                             doc_boundary="blank-line", show_progress=False)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
        baseline = baseline or seconds
        print(f"{workers:>8} {seconds:>8.2f} {total / 1e6 / seconds:>7.2f} {cpu:>7.2f} {summary.tokens:>10} "
              f"{baseline / seconds:>7.2f}x")


def synthetic_dataset(prefix: Path, tokens: float, documents: float) -> np.ndarray:
    """A size table with lognormal lengths summing to about `tokens`, stored as .idx + sparse .bin."""
    rng = np.random.default_rng(0)
    sigma = 1.0
    mean_length = tokens / documents
    sizes = rng.lognormal(np.log(mean_length) - sigma ** 2 / 2, sigma, int(documents))
    sizes = np.clip(sizes, 1, np.iinfo(np.int32).max).astype(np.int32)
    write_index(f"{prefix}.idx", np.uint16, sizes)
    with open(f"{prefix}.bin", "wb") as stream:
        stream.truncate(int(sizes.sum(dtype=np.int64)) * 2)
    return sizes


def index_table(work_dir, tokens, documents, seq_length, blend_samples):
    prefix = work_dir / "synthetic"
    sizes = synthetic_dataset(prefix, tokens, documents)
    total = int(sizes.sum(dtype=np.int64))
    samples = samples_per_epoch(total, seq_length)
    print(f"\nIndex building: {len(sizes):,} documents, {total:,} tokens, seq_length {seq_length}")
    print(f"{'case':<58} {'seconds':>8}")
    for label, epochs in (("1 epoch", 1), ("3 epochs", 3)):
        for state in ("cold (build + cache)", "warm (load cache)"):
            start = time.perf_counter()
            build_gpt_datasets([str(prefix)], None, "1,0,0", seq_length, 1234, (samples * epochs, 0, 0))
            print(f"{f'GPTDataset {label}, {samples * epochs:,} samples, {state}':<58} {time.perf_counter() - start:>8.2f}")
    start = time.perf_counter()
    build_blending_index([0.5, 0.3, 0.2], int(blend_samples))
    print(f"{f'blending index, 3 datasets, {int(blend_samples):,} samples':<58} {time.perf_counter() - start:>8.2f}")


def main():
    args = parse_args()
    books = sorted((default_corpus_dir(args.data) / "gutenberg").glob("*.txt"))
    with tempfile.TemporaryDirectory() as work_dir:
        work_dir = Path(work_dir)
        tokenizer = args.tokenizer
        if tokenizer is None:
            start = time.perf_counter()
            tokenizer = train_tokenizer(CorpusReader(books, doc_boundary="blank-line"), work_dir / "bpe",
                                        args.vocab_size, "bpe", input_sentence_size=200_000)
            print(f"trained BPE {args.vocab_size} on the books in {time.perf_counter() - start:.1f} s")
        tokenization_table(books, tokenizer, args.workers, work_dir)
        index_table(work_dir, args.tokens, args.documents, args.seq_length, args.blend_samples)


if __name__ == "__main__":
    main()
