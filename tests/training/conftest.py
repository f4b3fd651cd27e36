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
