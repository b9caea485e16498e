"""A full decode of every image file a dataset's loader would read, before anything runs.

Suite validation reads metadata only (folder listings, at most image headers), so a truncated PNG used to pass
``harness validate`` and then stop ``harness run`` once its run directory existed. :func:`verify_images` decodes each
file the way the loader does (same function, mode and size: :class:`~harness.data.sources.ImageFiles`), in a few
threads (Pillow releases the GIL while it decodes), and returns every bad file with the decoder's reason.

Re-checking a large folder is instant: files that decoded are remembered in a small JSON file per folder under the
cache root (``$FEWSHOT_CACHE`` or ``~/.cache/fewshot-harness``, ``image-checks/``), keyed by absolute path, size and
mtime (nanoseconds) and the decode settings. A file that changed in any of those is decoded again; a file whose
bytes change with size and mtime restored is not (the loader still names it if it then fails). Only good files are
remembered, so a bad file is decoded -- and reported -- every time until it is fixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.data import sources as S
from harness.data.errors import ImageDecodeError
from harness.files import write_json

__all__ = ["CACHE_VERSION", "BadImage", "ImageCheck", "check_cache_path", "verify_images"]

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_KIND = "image-checks"

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` from the calling thread while files are decoded."""


@dataclass(frozen=True)
class BadImage:
    path: Path
    reason: str


@dataclass(frozen=True)
class ImageCheck:
    """The outcome of one check: ``total`` files, of which ``cached`` were known good and skipped, ``decoded``
    decoded now; ``bad`` in the loader's file order."""

    root: Path
    total: int
    decoded: int
    cached: int
    bad: tuple[BadImage, ...]

    @property
    def ok(self) -> bool:
        return not self.bad


def check_cache_path(root: Path) -> Path:
    """The cache file of the folder ``root`` (one per folder: small files, and checks of two folders never race)."""
    from harness.metrics.cache import cache_root

    digest = hashlib.sha256(str(Path(root).absolute()).encode()).hexdigest()[:16]
    return cache_root() / CACHE_KIND / f"{digest}.json"


def _read_cache(path: Path, root: Path) -> dict[str, list[Any]] | None:
    """``{absolute path: [size, mtime_ns, settings]}`` of files known good; empty when there is no cache yet, None
    when it is damaged or foreign: then it is ignored with a warning and rewritten after this check. A cache must
    never fail a check, nor make a bad file pass -- a missing entry only costs a decode."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot read the image-check cache (%s); decoding every image again", path, exc)
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            raise ValueError(f"not a version-{CACHE_VERSION} image-check cache")
        entries = data["files"]
        if not isinstance(entries, dict) or not all(
            isinstance(v, list) and len(v) == 3 and isinstance(v[0], int) and isinstance(v[1], int)
            and isinstance(v[2], str) for v in entries.values()
        ):
            raise ValueError("its 'files' are not {path: [size, mtime_ns, settings]}")
    except (ValueError, KeyError) as exc:
        log.warning("%s: damaged image-check cache ignored (%s); every image under %s is decoded again and the "
                    "cache rewritten", path, exc, root)
        return None
    return entries


def _write_cache(path: Path, root: Path, entries: dict[str, list[Any]]) -> None:
    """Atomically (:func:`harness.files.write_json`): a check killed mid-write, or two checks
    at once, leave the old cache or a whole new one, never half of one. A cache that cannot be written is a warning:
    the check itself succeeded."""
    try:
        write_json(path, {"version": CACHE_VERSION, "root": str(root), "files": entries}, indent=None, sort_keys=False)
    except OSError as exc:
        log.warning("%s: cannot write the image-check cache (%s); the next check decodes every image again", path, exc)


def _check_one(files: S.ImageFiles, path: Path) -> str | None:
    """None if ``path`` decodes as the loader would decode it, else the reason."""
    try:
        files.decode(path)
    except ImageDecodeError as exc:
        return exc.reason
    return None


def verify_images(cfg: Any, *, progress: Progress | None = None, use_cache: bool = True,
                  threads: int = S.DECODE_THREADS) -> ImageCheck | None:
    """Decode every image file ``cfg``'s dataset would load; None for datasets without image files.

    Raises :class:`~harness.data.errors.DataSourceError` when the files cannot even be listed (a missing folder),
    as the loader would."""
    from harness.registry import DATASETS

    image_files = getattr(DATASETS.get(cfg.name), "image_files", None)  # a plugin reader may predate the method
    files = image_files(cfg) if image_files is not None else None
    if files is None:
        return None
    root = files.root
    cache_file = check_cache_path(root)
    known = _read_cache(cache_file, root) if use_cache else {}
    rewrite = known is None
    known = known or {}
    stats: dict[Path, os.stat_result] = {}
    bad: dict[Path, str] = {}
    todo: list[Path] = []
    for path in files.paths:
        try:
            stats[path] = st = os.stat(path)
        except OSError as exc:
            bad[path] = S.decoder_reason(exc) if isinstance(exc, FileNotFoundError) else f"cannot stat: {exc}"
            continue
        if known.get(str(path.absolute())) != [st.st_size, st.st_mtime_ns, files.settings]:
            todo.append(path)
    cached = len(files.paths) - len(todo) - len(bad)
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            futures = {pool.submit(_check_one, files, p): p for p in todo}
            for done, future in enumerate(as_completed(futures), start=1):
                reason = future.result()
                if reason is not None:
                    bad[futures[future]] = reason
                if progress is not None:
                    progress(done, len(todo))
    if use_cache:
        fresh = dict(known)
        for path in todo:
            key = str(path.absolute())
            if path in bad:
                fresh.pop(key, None)
            else:
                st = stats[path]
                fresh[key] = [st.st_size, st.st_mtime_ns, files.settings]
        for path in bad:  # missing or unstat-able files were not decoded; forget them too
            fresh.pop(str(path.absolute()), None)
        if rewrite or fresh != known:
            _write_cache(cache_file, root, fresh)
    ordered = tuple(BadImage(p, bad[p]) for p in files.paths if p in bad)
    return ImageCheck(root, len(files.paths), len(todo), cached, ordered)
