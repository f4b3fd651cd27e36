"""Write files so that readers never see a half-written one: temp name in the same folder, rename at the end."""

import contextlib
import os
import secrets
from pathlib import Path

from sa_megatron.errors import DataError


@contextlib.contextmanager
def atomic_paths(*targets):
    """Yield one temp path per target; on success rename each onto its target, on failure delete them all.

    Temps live next to their targets so the final `os.replace` is a same-filesystem atomic rename. They are
    fresh names, not files made by `mkstemp`, so the caller creates them with the usual umask permissions
    (mkstemp's 0600 would leave shared datasets and tokenizers unreadable to other users).
    """
    temps = []
    try:
        for target in map(Path, targets):
            temps.append(create_temp_beside(target))
        yield temps
        for temp, target in zip(temps, targets):
            os.replace(temp, target)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def create_temp_beside(target: Path) -> Path:
    """Create target's folder and an empty temp in it, so an unwritable path fails now, named, not after the work."""
    if target.is_dir():  # the final rename onto a folder would fail only after the work
        raise DataError(f"{target}: is a folder; expected a file path to write (a new file or one to replace)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = unique_temp_path(target)
        temp.touch(exist_ok=False)
    except OSError as err:
        raise DataError(f"{target}: cannot write there ({err.strerror}: {err.filename}); "
                        "expected a path in a writable folder") from None
    return temp


def check_writable_folder(folder) -> None:
    """Create `folder` and a probe file in it, so a log folder that cannot be written fails before the work."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: is a file; expected a folder to write into")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = unique_temp_path(folder / "probe")
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as err:
        raise DataError(f"{folder}: cannot write there ({err.strerror}: {err.filename}); "
                        "expected a writable folder") from None


def unique_temp_path(target: Path) -> Path:
    """A hidden name next to `target` that no other process or call picks."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")


def write_bytes_atomic(target, data: bytes) -> None:
    with atomic_paths(target) as (temp,):
        temp.write_bytes(data)
