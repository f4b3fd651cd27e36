"""Start N real ranks as separate processes with the variables torchrun (or srun) would give them."""

import os
import subprocess
import sys

from sa_megatron.training.distributed import TORCHRUN_VARS, free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_env(**extra: str) -> dict:
    """This process's environment for a fresh run: without the rank variables other tests set in this process, and
    without TRITON_INTERPRET (switched on here by the Triton tests; real runs never have it). One thread (2 cores),
    and no GPU: these runs are the CPU/gloo ones, and on a GPU host rank r would otherwise claim device r."""
    env = {k: v for k, v in os.environ.items() if k not in (*TORCHRUN_VARS, "TRITON_INTERPRET")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": "", **extra}


def start_ranks(nproc: int, args: list[str], log_dir) -> list[subprocess.Popen]:
    """`python <args>` once per rank, stdout+stderr to log_dir/rank_<r>.log."""
    port = str(free_port())
    procs = []
    for rank in range(nproc):
        env = child_env(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc),
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        log = open(os.path.join(log_dir, f"rank_{rank}.log"), "w")
        procs.append(subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
        log.close()
    return procs


def wait_all(procs, timeout: float = 240) -> list[int]:
    try:
        return [proc.wait(timeout=timeout) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def read_log(log_dir, rank: int) -> str:
    with open(os.path.join(log_dir, f"rank_{rank}.log")) as f:
        return f.read()


def run_ranks(nproc: int, args: list[str], log_dir, timeout: float = 240) -> None:
    """Run to completion and fail with every rank's log when one exits non-zero."""
    codes = wait_all(start_ranks(nproc, args, log_dir), timeout)
    if any(codes):
        logs = "\n".join(f"--- rank {r} (exit {c}) ---\n{read_log(log_dir, r)[-4000:]}" for r, c in enumerate(codes))
        raise AssertionError(f"ranks failed:\n{logs}")
