"""Process-group setup: torchrun's environment variables, or a 1-process world when none are set."""

import os
import socket

import torch
import torch.distributed as dist

# What torchrun (and our tests, srun wrappers) set for each rank.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def world_size_from_env() -> int:
    """The world size this process will join, readable before any heavy initialization."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_backend(choice: str) -> str:
    if choice == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return choice


def init_distributed(backend_choice: str) -> None:
    """Join (or create) the default process group through DeepSpeed; a no-op when one already exists."""
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        # Not launched by torchrun/srun: become rank 0 of a world of one on a free local port.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    backend = resolve_backend(backend_choice)
    if backend == "nccl":
        get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", "0")))
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def all_reduce_mean(value: float) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one (for decisions all ranks must share)."""
    tensor = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def all_ranks(flag: bool) -> bool:
    return not any_rank(not flag)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
