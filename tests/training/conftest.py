"""Shared fixtures for the training tests: one tiny corpus per session, and an in-process world of one rank."""

import os

import pytest

from sa_megatron.training.distributed import TORCHRUN_VARS, free_port
from tests.training.tiny_run import make_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(tokenizer path, dataset prefix) of a small real corpus."""
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def other_tokenizer(tmp_path_factory):
    """A second real tokenizer of the same text (400 pieces): data or checkpoints of `corpus` must refuse it."""
    from sa_megatron.data.corpus import CorpusReader
    from sa_megatron.data.tokenizer import train_tokenizer
    from tests.training.tiny_run import corpus_text

    work = tmp_path_factory.mktemp("other-tokenizer")
    text = work / "corpus.txt"
    text.write_text(corpus_text(), encoding="utf-8")
    return train_tokenizer(CorpusReader([text], doc_boundary="blank-line"), work / "other", vocab_size=400)


@pytest.fixture(scope="session")
def one_rank_world():
    """Let `train` run inside the pytest process as rank 0 of 1; the group is torn down after the session."""
    import torch.distributed as dist

    saved = {name: os.environ.get(name) for name in TORCHRUN_VARS}
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
