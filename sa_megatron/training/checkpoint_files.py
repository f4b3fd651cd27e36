"""The on-disk layout of a checkpoint directory and the durable-write helpers behind it.

    save_dir/
      latest                 "step_N" of the newest complete checkpoint (for people and tools)
      tokenizer.model        a copy of the run's tokenizer (its sha256 is in every metadata.json), so `eval` and
                             `generate` need no path from the machine or directory the run started in
      step_N/
        engine/              DeepSpeed's files (engine.save_checkpoint, tag "engine")
        rng/rank_R.json      every random generator's state, one file per rank
        metadata.json        resolved config, iteration, consumed samples, tokenizer hash, code version, layout,
                             the last step's loss (always finite: a skipped, non-finite step is never saved)
        COMPLETE             written last: a step_N without it is unfinished
      .tmp-step_N/           a checkpoint being written; renamed to step_N once complete
      damaged-step_N.T/      a step_N that resume could not use, set aside (at unix time T) rather than deleted
"""

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

from sa_megatron.data.tokenizer import model_sha256
from sa_megatron.errors import CheckpointError

ENGINE_TAG = "engine"
TOKENIZER = "tokenizer.model"
METADATA = "metadata.json"
MARKER = "COMPLETE"
LATEST = "latest"
TEMP_PREFIX = ".tmp-step_"
_STEP_DIR = re.compile(r"step_(\d+)")


def step_dir_name(step: int) -> str:
    return f"step_{step}"


def temp_dir_name(step: int) -> str:
    return f"{TEMP_PREFIX}{step}"


def set_aside(checkpoint: Path) -> Path:
    """Rename an unusable checkpoint out of the step_N namespace, so resume and prune never see it again."""
    target = checkpoint.with_name(f"damaged-{checkpoint.name}.{int(time.time())}")
    os.replace(checkpoint, target)
    return target


def rng_file(checkpoint: Path, rank: int) -> Path:
    return checkpoint / "rng" / f"rank_{rank}.json"


def step_dirs(save_dir: Path) -> list[Path]:
    """Every step_N directory in `save_dir`, newest first, complete or not."""
    if not save_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in save_dir.iterdir() if p.is_dir() and (m := _STEP_DIR.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / MARKER).is_file()


def read_metadata(checkpoint: Path) -> Optional[dict]:
    """The metadata dict, or None when the file is missing or not valid JSON."""
    try:
        return read_json(checkpoint / METADATA)
    except (OSError, ValueError):
        return None


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def write_json_durably(path: Path, data) -> None:
    write_bytes_durably(path, json.dumps(data).encode("utf-8"))


def write_bytes_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root` (and `root`) to disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(os.path.join(dirpath, name), os.O_RDONLY)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    _fsync_path(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync_path(path, flags) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temp: Path, final: Path) -> None:
    """Mark `temp` complete and rename it to `final`, then point `latest` at it; each step survives a crash."""
    write_json_durably(temp / MARKER, {"step_dir": final.name})
    fsync_dir(temp)
    os.replace(temp, final)
    fsync_dir(final.parent)
    pointer = final.parent / f".{LATEST}.tmp"
    pointer.write_text(final.name + "\n", encoding="utf-8")
    _fsync_path(pointer, os.O_RDONLY)
    os.replace(pointer, final.parent / LATEST)
    fsync_dir(final.parent)


def store_tokenizer(save_dir: Path, source: Path, sha256: str) -> None:
    """Copy the tokenizer at `source` (whose sha256 the run computed when it loaded it) to save_dir/tokenizer.model,
    atomically, unless that copy is already this tokenizer. Refuses a source changed since it was loaded."""
    copy = save_dir / TOKENIZER
    if copy.is_file() and model_sha256(copy.read_bytes()) == sha256:
        return
    data = source.read_bytes()
    if model_sha256(data) != sha256:
        raise CheckpointError(f"tokenizer {source} changed while the run was starting; start it again")
    temp = save_dir / f".{TOKENIZER}.tmp"
    write_bytes_durably(temp, data)
    os.replace(temp, copy)
    fsync_dir(save_dir)


def remove_unfinished_saves(save_dir: Path) -> None:
    """Delete every `.tmp-step_N`: what saves that died half-way left behind (none is running: callers own the dir)."""
    for leftover in save_dir.glob(f"{TEMP_PREFIX}*"):
        shutil.rmtree(leftover)


def prune(save_dir: Path, keep_last: int) -> None:
    """Delete step directories older than the `keep_last` newest complete ones. (Every checkpoint follows a step with
    a finite loss, so the newest one kept is always one to resume from after a divergence.)"""
    complete = [p for p in step_dirs(save_dir) if is_complete(p)]
    if len(complete) <= keep_last:
        return
    oldest_kept = complete[keep_last - 1]
    dirs = step_dirs(save_dir)
    for path in dirs[dirs.index(oldest_kept) + 1:]:
        shutil.rmtree(path)
