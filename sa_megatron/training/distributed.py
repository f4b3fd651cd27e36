"""Process-group setup: torchrun's environment variables, or a 1-process world when none are set."""

import os
import socket
import sys
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

from sa_megatron.errors import RendezvousError

# What torchrun (and our tests, srun wrappers) set for each rank.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def world_size_from_env() -> int:
    """The world size this process will join, readable before any heavy initialization."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_backend(choice: str) -> str:
    if choice == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return choice


def init_distributed(backend_choice: str, socket_ifname: Optional[str] = None, timeout_s: float = 180.0) -> None:
    """Join (or create) the default process group; a no-op when one already exists.

    The rendezvous is ours, not torch's `env://`: rank 0 serves a TCPStore at MASTER_ADDR:MASTER_PORT, every rank
    registers there, and a master that cannot be reached or a rank that never arrives ends every waiting rank within
    `timeout_s` with a one-line RendezvousError naming the address, port and ranks. Collectives afterwards keep
    torch's long default timeout (a slow checkpoint barrier is not a failed rendezvous). DeepSpeed then adopts the
    initialized group.
    """
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        # Not launched by torchrun/srun: become rank 0 of a world of one on a free local port.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    if socket_ifname:  # the config names the interfaces: it wins over the environment
        os.environ["GLOO_SOCKET_IFNAME"] = os.environ["NCCL_SOCKET_IFNAME"] = socket_ifname
    _prefer_this_environments_tools()
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    backend = resolve_backend(backend_choice)
    if backend == "nccl":
        get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", "0")))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = _rendezvous(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), rank, world, timeout_s)
    dist.init_process_group(backend, store=dist.PrefixStore("process_group", store), rank=rank, world_size=world)
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def _prefer_this_environments_tools() -> None:
    """Put the interpreter's bin/ first on PATH, as an activated venv does. DeepSpeed JIT-loads its CPU op with the
    first `ninja` on PATH, and a system ninja of another version reads the cached build log as stale and recompiles
    the op (80-100 s) whenever runs alternate between an activated shell and a bare `.venv/bin/python`."""
    bin_dir = os.path.dirname(sys.executable)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])


def _rendezvous(addr: str, port: int, rank: int, world: int, timeout_s: float) -> "dist.Store":
    """A TCPStore every rank has joined, or a RendezvousError after `timeout_s` seconds."""
    where = f"MASTER_ADDR={addr} MASTER_PORT={port}"
    limit = f"within {timeout_s:g} s (parallel.init_timeout_s)"
    hint = ("check that MASTER_ADDR is the first node of the job and reachable from every node, that the port is "
            "free, and that gloo/NCCL use the right interface (parallel.socket_ifname or GLOO_SOCKET_IFNAME/"
            "NCCL_SOCKET_IFNAME)")
    try:
        store = dist.TCPStore(addr, port, world, rank == 0, timedelta(seconds=timeout_s), wait_for_workers=False)
    except Exception as err:  # DistNetworkError / RuntimeError from the C++ side, with multi-line detail
        # rank 0 serves the store on MASTER_PORT and connects to it through MASTER_ADDR like everyone else
        what = (f"could not open the rendezvous at {where}" if rank == 0
                else f"could not reach the rendezvous master at {where}")
        raise RendezvousError(f"rank {rank} of {world} {what} {limit}: {_first_line(err)}; {hint}") from None
    store.set(f"sa_megatron/joined/{rank}", "1")
    try:
        store.wait([f"sa_megatron/joined/{r}" for r in range(world)], timedelta(seconds=timeout_s))
    except Exception as err:
        try:
            missing = [r for r in range(world) if not store.check([f"sa_megatron/joined/{r}"])]
        except Exception:
            missing = "unknown (the master went away)"
        raise RendezvousError(f"rank {rank} of {world} at {where}: ranks {missing} did not join {limit}: "
                              f"{_first_line(err)}; check that all {world} ranks were started; {hint}") from None
    store.set_timeout(timedelta(minutes=30))  # later store traffic (new_group) waits like torch's collectives
    return store


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
