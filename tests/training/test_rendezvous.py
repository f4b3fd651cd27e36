"""The rendezvous fails fast and says why: a master nobody serves, or a rank that never starts, ends the waiting
rank within parallel.init_timeout_s with one line naming MASTER_ADDR, MASTER_PORT and the ranks (real processes)."""

import subprocess
import sys
import time

import pytest

from sa_megatron.training.distributed import free_port
from tests.training.launch import REPO, child_env

pytestmark = pytest.mark.distributed
JOIN = ("from sa_megatron.training.distributed import init_distributed\n"
        "init_distributed('gloo', None, 3.0)\n")


def start(rank: int, world: int, port: int) -> subprocess.Popen:
    env = child_env(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(port))
    return subprocess.Popen([sys.executable, "-c", JOIN], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_unreachable_master_and_missing_rank_fail_within_the_timeout():
    lonely_master_port, nobody_port = free_port(), free_port()
    started = time.monotonic()
    master = start(0, 2, lonely_master_port)  # its rank 1 never comes
    worker = start(1, 2, nobody_port)  # nobody serves this port
    master_out, worker_out = master.communicate(timeout=120)[0], worker.communicate(timeout=120)[0]
    elapsed = time.monotonic() - started
    assert master.returncode and worker.returncode
    assert (f"rank 0 of 2 at MASTER_ADDR=127.0.0.1 MASTER_PORT={lonely_master_port}: ranks [1] did not join within "
            "3 s (parallel.init_timeout_s)") in master_out, master_out[-3000:]
    assert (f"rank 1 of 2 could not reach the rendezvous master at MASTER_ADDR=127.0.0.1 MASTER_PORT={nobody_port} "
            "within 3 s (parallel.init_timeout_s)") in worker_out, worker_out[-3000:]
    assert "RendezvousError" in master_out  # raised as the CLI's one-line UserInputError kind
    assert elapsed < 60, elapsed  # interpreter start-up plus 3 s, not torch's 30-minute default
