"""Data pipeline: tokenizer, Megatron-format preprocessing, GPT datasets and the demo corpus."""

from sa_megatron.data.builder import build_gpt_datasets
from sa_megatron.data.prepare import default_corpus_dir, prepare_corpus
from sa_megatron.data.tokenizer import load_tokenizer
from sa_megatron.data.tokenizer_check import check_dataset_tokenizer

__all__ = ["load_tokenizer", "build_gpt_datasets", "check_dataset_tokenizer", "default_corpus_dir", "prepare_corpus"]
