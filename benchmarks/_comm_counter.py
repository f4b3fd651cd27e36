"""Counts the bytes each torch.distributed call of this process moves, by process group, for benchmarks/parallel.py.

`install()` replaces the collectives and point-to-point functions of `torch.distributed` (and of `distributed_c10d`,
where torch's own helpers look them up) with wrappers that record, per call, the local tensor bytes and the bytes
this rank sends under the same accounting as the planner (sa_megatron/planning/communication.py): a ring all-reduce
of P bytes over n ranks sends 2(n−1)/n·P, an all-gather or reduce-scatter of a P-byte shard sends (n−1)·P, a send
sends P and a receive sends nothing. Install it before DeepSpeed is imported: DeepSpeed's backend captures some of
these functions when it starts. Nested calls (torch helpers calling one another) count once, at the outermost.

A measurement only: the wrappers call the originals with the same arguments.
"""
import functools
import inspect
import threading
from collections import defaultdict

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d

_local = threading.local()
# (category, op) -> [calls, payload bytes, sent bytes]
counts: dict = defaultdict(lambda: [0, 0, 0.0])
# Rank sets of this rank's groups, set per run by set_groups: {"tensor": frozenset, "data": ..., "pipeline": ...}
_groups: dict = {}
_ranks_of: dict = {}


def set_groups(groups: dict) -> None:
    _groups.clear()
    _groups.update({name: frozenset(ranks) for name, ranks in groups.items()})
    _ranks_of.clear()


def snapshot() -> dict:
    return {key: list(value) for key, value in counts.items()}


def difference(after: dict, before: dict) -> dict:
    """{"category/op": [calls, payload, sent]} of what happened between two snapshots."""
    out = {}
    for key, (calls, payload, sent) in after.items():
        c0, p0, s0 = before.get(key, (0, 0, 0.0))
        if calls - c0:
            out["/".join(key)] = [calls - c0, payload - p0, sent - s0]
    return out


def _nbytes(tensors) -> int:
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    return sum(_nbytes(t) for t in tensors)


def _group_ranks(group) -> frozenset:
    key = id(group)
    if key not in _ranks_of:
        if group is None or group is dist.GroupMember.WORLD:
            ranks = range(dist.get_world_size())
        else:
            ranks = dist.get_process_group_ranks(group)
        _ranks_of[key] = frozenset(ranks)
    return _ranks_of[key]


def _category(group) -> tuple[str, int]:
    ranks = _group_ranks(group)
    for name, members in _groups.items():
        if len(members) > 1 and ranks == members:
            return name, len(ranks)
    return ("world" if len(ranks) == dist.get_world_size() else f"group{len(ranks)}"), len(ranks)


# op name -> (the argument holding the local tensor(s), sent bytes as a function of (payload, group size, args))
def _ring(payload, n, _):
    return 2 * (n - 1) / n * payload


def _shard(payload, n, _):
    return (n - 1) * payload


def _reduce(payload, n, _):
    return (n - 1) / n * payload


def _broadcast(payload, n, args):
    # The source sends its tensor once (gloo sends it to each other rank: n−1 times); the others send nothing.
    return (n - 1) * payload if args.get("src") == dist.get_rank() else 0.0


COLLECTIVES = {
    "all_reduce": ("tensor", _ring),
    "all_reduce_coalesced": ("tensors", _ring),
    "reduce": ("tensor", _reduce),
    "broadcast": ("tensor", _broadcast),
    "all_gather": ("tensor", _shard),
    "all_gather_into_tensor": ("input_tensor", _shard),
    "_all_gather_base": ("input_tensor", _shard),
    "reduce_scatter": ("output", _shard),
    "reduce_scatter_tensor": ("output", _shard),
    "_reduce_scatter_base": ("output", _shard),
    "all_to_all_single": ("input", _reduce),
}
POINT_TO_POINT = {"send": True, "isend": True, "recv": False, "irecv": False}


def _wrap(name, original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if getattr(_local, "depth", 0):
            return original(*args, **kwargs)
        _local.depth = 1
        try:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = bound.arguments
            if name in POINT_TO_POINT:
                payload = _nbytes(values["tensor"])
                key = ("pipeline", name)
                sent = payload if POINT_TO_POINT[name] else 0.0
            else:
                argument, sent_of = COLLECTIVES[name]
                payload = _nbytes(values[argument])
                category, n = _category(values.get("group"))
                key = (category, name)
                sent = sent_of(payload, n, values) if n > 1 else 0.0
            entry = counts[key]
            entry[0] += 1
            entry[1] += payload
            entry[2] += sent
            return original(*args, **kwargs)
        finally:
            _local.depth = 0

    wrapper.__wrapped_by_comm_counter__ = True
    return wrapper


def install() -> None:
    for name in [*COLLECTIVES, *POINT_TO_POINT]:
        original = getattr(distributed_c10d, name, None)
        if original is None or getattr(original, "__wrapped_by_comm_counter__", False):
            continue
        wrapper = _wrap(name, original)
        setattr(distributed_c10d, name, wrapper)
        if getattr(dist, name, None) is original:
            setattr(dist, name, wrapper)


def wire_bytes() -> tuple[int, int]:
    """(written, read) bytes of this process's write/read system calls so far (/proc/self/io wchar, rchar): gloo's
    TCP transport writes with writev and reads with read, so over a step these are its bytes on the wire, plus any
    file or terminal output of that step."""
    fields = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    return int(fields["wchar"]), int(fields["rchar"])
