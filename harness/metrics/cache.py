"""On-disk caches of the metrics layer: where they live, content hashes, atomic writes and a cross-process lock.

Layout under the cache root (``$FEWSHOT_CACHE`` or ``~/.cache/fewshot-harness``)::

    evaluators/domain-<hash>.pt     state dict + architecture of a trained domain classifier (tensors and plain values)
    evaluators/domain-<hash>.json   its test accuracy, training time and every input of the hash
    references/<key>.pt             held-out real features/logits of one split for one evaluator
    baselines/<key>.json            downstream-accuracy baselines (real only, classic augmentation) of one split

Every file is written to a temporary name and renamed (:mod:`harness.files`), so a reader never sees half a file;
a damaged entry is a miss, recomputed with a :class:`CacheEntryDamaged` warning naming it; concurrent trials that
would compute the same entry serialise on a lock file (POSIX ``flock``; elsewhere they simply both compute it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import files

CACHE_ENV = "FEWSHOT_CACHE"


class CacheEntryDamaged(UserWarning):
    """A cache file could not be read back; it is recomputed and replaced."""


def cache_root(override: str | Path | None = None) -> Path:
    """``override``, else ``$FEWSHOT_CACHE``, else ``~/.cache/fewshot-harness``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fewshot-harness"


def cache_dir(kind: str, root: str | Path | None = None) -> Path:
    """The sub-directory ``kind`` (``evaluators``, ``references``, ``baselines``) of the cache root."""
    return cache_root(root) / kind


def stable_hash(record: Any) -> str:
    """sha256 (hex) of the canonical JSON of ``record``."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_json(path: Path, data: Any) -> None:
    files.write_json(path, data)


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or damaged (a damaged entry is a miss: recomputed and
    overwritten, with a warning naming it)."""
    if not path.exists():
        return None
    try:
        return files.read_json(path)
    except files.DamagedFile as exc:
        warnings.warn(f"cache entry {exc}; it is computed again", CacheEntryDamaged, stacklevel=2)
        return None


def write_tensors(path: Path, data: dict[str, Any]) -> None:
    """Tensors and plain values only (:func:`harness.files.save_tensors`), so that loading needs no pickle of code."""
    files.save_tensors(path, data)


def read_tensors(path: Path) -> dict[str, Any] | None:
    """What :func:`write_tensors` wrote (``weights_only`` loading), or None when missing or damaged (recomputed,
    with a warning naming the file)."""
    if not path.exists():
        return None
    try:
        return files.load_tensors(path)
    except files.DamagedFile as exc:
        warnings.warn(f"cache entry {exc}; it is computed again", CacheEntryDamaged, stacklevel=2)
        return None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on ``path`` (created if needed) for the duration of the block; a no-op without ``fcntl``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
