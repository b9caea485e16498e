"""On-disk caches of the metrics layer: where they live, content hashes, atomic writes and a cross-process lock.

Layout under the cache root (``$FEWSHOT_CACHE`` or ``~/.cache/fewshot-harness``)::

    evaluators/domain-<hash>.pt     state dict + architecture of a trained domain classifier (tensors and plain values)
    evaluators/domain-<hash>.json   its test accuracy, training time and every input of the hash
    references/<key>.pt             held-out real features/logits of one split for one evaluator
    baselines/<key>.json            downstream-accuracy baselines (real only, classic augmentation) of one split

Every file is written to a temporary name and renamed, so a reader never sees half a file; concurrent trials that
would compute the same entry serialise on a lock file (POSIX ``flock``; elsewhere they simply both compute it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

CACHE_ENV = "FEWSHOT_CACHE"


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


def _atomic(path: Path) -> tuple[Path, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; cache entries are ordinary readable files
    return Path(tmp), fd


def write_json(path: Path, data: Any) -> None:
    tmp, fd = _atomic(path)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable (a broken cache entry is a miss)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_tensors(path: Path, data: dict[str, Any]) -> None:
    """``torch.save`` of tensors and plain values only, so that loading needs no pickle of code."""
    tmp, fd = _atomic(path)
    os.close(fd)
    try:
        torch.save(data, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def read_tensors(path: Path) -> dict[str, Any] | None:
    """What :func:`write_tensors` wrote (``weights_only`` loading), or None when missing or unreadable."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a corrupt cache entry is a miss, it gets recomputed and overwritten
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
