"""Write files so that readers never see a half-written one: temp name in the same folder, rename at the end."""

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_paths(*targets):
    """Yield one temp path per target; on success rename each onto its target, on failure delete them all.

    Temps live next to their targets so the final `os.replace` is a same-filesystem atomic rename.
    """
    temps = []
    try:
        for target in map(Path, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            temps.append(Path(temp))
        yield temps
        for temp, target in zip(temps, targets):
            os.replace(temp, target)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def write_bytes_atomic(target, data: bytes) -> None:
    with atomic_paths(target) as (temp,):
        temp.write_bytes(data)
