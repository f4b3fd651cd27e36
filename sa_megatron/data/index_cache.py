"""On-disk cache of GPT dataset index arrays, keyed by a hash of everything they depend on.

An entry is a folder `<name>-<key>-<E>epochs/` holding one .npy per array. Entries are written to a temp
folder and renamed into place, so a reader sees a complete entry or none. Since indices are prefix-stable,
an entry built for more epochs serves any request for fewer.
"""

import glob
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from sa_megatron.data.atomic import unique_temp_path
from sa_megatron.errors import DataError

ARRAYS = ("document_index", "sample_index", "shuffle_index")
FORMAT_VERSION = 2  # 2: a split's documents are any list of ids (hashed), no longer a consecutive range


def cache_key(description: dict, documents: np.ndarray, sizes: np.ndarray) -> str:
    """Hash of the description, the split's document ids and their sizes."""
    digest = hashlib.sha256(json.dumps({**description, "format": FORMAT_VERSION}, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(documents, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(sizes, dtype=np.int32).tobytes())
    return digest.hexdigest()[:20]


def load_cached(cache_dir: Path, name: str, key: str, num_epochs: int):
    """The arrays of the smallest entry with at least `num_epochs` epochs (memory-mapped), or None."""
    entries = []
    pattern = glob.escape(f"{name}-{key}-") + "*epochs"  # dataset names may hold [, * or ?
    for folder in cache_dir.glob(pattern):
        epochs = folder.name.rsplit("-", 1)[1].removesuffix("epochs")
        if epochs.isdigit() and int(epochs) >= num_epochs:
            entries.append((int(epochs), folder))
    if not entries:
        return None
    folder = min(entries)[1]
    return {array: np.load(folder / f"{array}.npy", mmap_mode="r") for array in ARRAYS}


def store(cache_dir: Path, name: str, key: str, num_epochs: int, arrays: dict, description: dict) -> None:
    entry = cache_dir / f"{name}-{key}-{num_epochs}epochs"
    temp = unique_temp_path(entry)
    try:
        temp.mkdir(parents=True)  # umask permissions, unlike mkdtemp's 0700, so other users can read the cache
    except OSError as err:
        raise DataError(f"{cache_dir}: cannot write the index cache ({err.strerror}); set data.cache_dir") from None
    try:
        for array in ARRAYS:
            np.save(temp / f"{array}.npy", arrays[array])
        (temp / "description.json").write_text(json.dumps(description, indent=1) + "\n")
        try:
            temp.rename(entry)
        except OSError:
            pass  # another process stored the same entry first; both are identical
    finally:
        shutil.rmtree(temp, ignore_errors=True)
