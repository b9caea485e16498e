"""Shared run storage for multi-node runs: where trials on any node leave their outputs.

A run directory is a local folder of the driver. On one machine that is all there is. On a cluster, trials run on
other machines whose disks the driver cannot read, so a run is given ``--storage URI`` that every node can write:

* ``s3://bucket/prefix``, ``gs://bucket/prefix`` (anything ``pyarrow.fs`` opens, as Ray Tune's own storage does);
* ``file:///mnt/shared/prefix``: a shared file system (NFS, EFS, Lustre) mounted at the same path on every node.

A plain path is refused for clusters: it names a folder on one machine only, and trials elsewhere would write their
results into folders nobody reads. (``file://`` is the explicit "this path is shared" statement.)

Layout under ``<storage>/<run key>/`` mirrors the run directory: the Tune experiment (``ray/``, written by Tune
itself), ``trials/<trial>/`` (uploaded by each trial when it ends, from whichever node ran it) and, at the end of a
run, everything else of the driver's run directory (report, run.json, sweep study). The run key is
``<suite>/<run dir name>``, so re-running with the same ``--run-dir`` resumes the same stored run.

Shared storage is reached over a network even when it looks like a folder, and networks fail for a while: every
operation here is retried with exponential backoff (0.5 s doubling to 30 s) for up to ``retry_s`` seconds in all
(default ``$HARNESS_STORAGE_RETRY_S``, else 300: an NFS failover or a network blip, not an outage), each retry logged.
Past that, :class:`StorageUnavailable` names the operation, the URI and what is safe where: a failed upload leaves
the local copy as it was (a failed download may have fetched part of its files). A file system that went away often
does not fail but answers "no such file" (an unmounted share is an empty folder): once a run's folder exists in
storage (Tune writes ``ray/`` into it before any trial), a missing run folder means storage is unreachable, never that
a result is absent, so a finished trial is not taken for unfinished and computed again, and nothing is written into
the empty mount point. A permission error is not retried: waiting does not grant access.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

SCHEMES_HINT = "s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, or file:///SHARED/MOUNT (a file system every node mounts)"
FIRST_RETRY_S = 0.5
MAX_RETRY_DELAY_S = 30.0

T = TypeVar("T")


def default_retry_s() -> float:
    """How long storage operations are retried in all: ``$HARNESS_STORAGE_RETRY_S``, else 300 s."""
    return float(os.environ.get("HARNESS_STORAGE_RETRY_S", "300"))


class StorageError(ValueError):
    """A storage URI that cannot serve a multi-node run; the message says why and what to pass instead."""


class StorageUnavailable(ConnectionError):
    """Shared storage failed for longer than the retry limit; the message names the operation, the URI, the last
    error, and that the local copy is intact."""


class _RunFolderGone(OSError):
    """The run's folder in storage answers "not found" although it existed: the storage is unreachable."""


def check_storage_uri(uri: str, *, option: str = "--storage") -> str:
    """``uri`` normalised (no trailing slash) if it is a URI every node can reach, else a :class:`StorageError`."""
    import pyarrow.fs

    uri = uri.strip().rstrip("/")
    if "://" not in uri:
        raise StorageError(
            f"{option} {uri!r} is a local path: on a cluster each node would write its trials into its own disk and "
            f"the driver would never see them. Pass {SCHEMES_HINT}."
        )
    try:
        pyarrow.fs.FileSystem.from_uri(uri)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad URIs / missing filesystems
        raise StorageError(f"{option} {uri!r}: pyarrow cannot open it ({exc}). Pass {SCHEMES_HINT}.") from None
    return uri


def run_key(suite_name: str, run_dir: Path) -> str:
    """Where a run lives under the storage root: ``<suite>/<run dir name>``."""
    return f"{suite_name}/{Path(run_dir).name}"


@dataclass(frozen=True)
class RunStorage:
    """One run's folder in shared storage: ``<uri>/<key>``. Pickled to the trials' workers with its retry limit
    (``retry_s``; the driver's environment decides it, not each node's)."""

    uri: str
    key: str
    retry_s: float = field(default_factory=default_retry_s, compare=False)
    first_retry_s: float = field(default=FIRST_RETRY_S, compare=False)
    # set once this process saw the run's folder in storage: from then on its absence means unreachable storage
    _seen: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @property
    def root(self) -> str:
        return f"{self.uri}/{self.key}"

    def tune_path(self) -> str:
        """Tune's ``storage_path``: Tune syncs experiment state and checkpoints there itself."""
        return f"{self.root}/ray"

    def _fs(self):
        import pyarrow.fs

        return pyarrow.fs.FileSystem.from_uri(self.root)

    # -- retries
    def _retry(self, operation: str, relative: str, fn: Callable[[], T], *, local: Path | None = None) -> T:
        """``fn()``, retried on storage errors with exponential backoff for up to ``retry_s`` seconds in all."""
        started = time.monotonic()
        delay, attempt = self.first_retry_s, 1
        where = f"{self.root}/{relative}".rstrip("/")
        while True:
            try:
                return fn()
            except PermissionError as exc:
                raise StorageUnavailable(
                    f"storage {self.uri}: {operation} {where} was refused ({exc}); waiting does not grant access: "
                    f"check the credentials or permissions for {self.uri} on this node"
                    f"{self._local_note(operation, local)}") from None
            except OSError as exc:  # pyarrow's I/O errors, a vanished mount (_RunFolderGone)
                elapsed = time.monotonic() - started
                if elapsed + delay > self.retry_s:
                    raise StorageUnavailable(
                        f"storage {self.uri} unreachable: {operation} {where} still failed after {attempt} attempts "
                        f"over {elapsed:.0f} s (limit {self.retry_s:g} s, $HARNESS_STORAGE_RETRY_S): "
                        f"{type(exc).__name__}: {exc}{self._local_note(operation, local)}") from None
                log.warning("storage %s: %s %s failed (%s: %s); retry %d in %.1f s", self.uri, operation, where,
                            type(exc).__name__, exc, attempt, delay)
                time.sleep(delay)
                delay, attempt = min(delay * 2, MAX_RETRY_DELAY_S), attempt + 1

    def _local_note(self, operation: str, local: Path | None) -> str:
        if local is None:
            return ". Nothing local was changed; run the same command again once the storage answers"
        if operation == "upload":
            return (f". The local copy {local} is intact; run the same command again once the storage answers (it "
                    "stores the run then)")
        return (f". {local} keeps what it had (a partial copy may have been added); run the same command again once "
                "the storage answers")

    def _check_run_folder(self, fs, base: str, relative: str) -> None:
        """Below the run's folder, a "not found" is believed (and a write made) only while the run's folder itself is
        there: Tune creates it (``ray/``) before any trial runs. The run's folder itself may be missing only before
        this process ever saw it (a run not stored yet)."""
        import pyarrow.fs

        if not relative.strip("/") and not self._seen:
            return
        if fs.get_file_info(base).type != pyarrow.fs.FileType.Directory:
            raise _RunFolderGone(f"the run's folder {self.root} is missing (storage unmounted or unreachable)")
        self._seen["run_folder"] = True

    def _exists(self, relative: str) -> bool:
        import pyarrow.fs

        fs, base = self._fs()
        info = fs.get_file_info(f"{base}/{relative}".rstrip("/"))
        if info.type == pyarrow.fs.FileType.NotFound:
            self._check_run_folder(fs, base, relative)
            return False
        self._seen["run_folder"] = True
        return True

    # -- operations
    def exists(self, relative: str = "") -> bool:
        """Whether ``<root>/<relative>`` is in storage (``""``: whether the run was stored at all)."""
        return self._retry("lookup", relative, lambda: self._exists(relative))

    def read_text(self, relative: str) -> str | None:
        def read() -> str | None:
            if not self._exists(relative):
                return None
            fs, base = self._fs()
            with fs.open_input_stream(f"{base}/{relative}") as stream:
                return stream.read().decode()

        return self._retry("read", relative, read)

    def upload(self, local: Path, relative: str = "", *, skip: tuple[str, ...] = ()) -> None:
        """Copy the folder ``local`` to ``<root>/<relative>`` (files are overwritten; nothing is deleted).
        ``skip``: top-level entries of ``local`` not to copy (e.g. ``ray``, which Tune keeps in storage itself).
        Below the run's folder, only into a run folder that is there (never into an unmounted share's mount point)."""
        import pyarrow.fs

        local = Path(local)

        def copy() -> None:
            fs, base = self._fs()
            target = f"{base}/{relative}".rstrip("/")
            self._check_run_folder(fs, base, relative)
            for entry in sorted(local.iterdir()) if local.exists() else []:
                if entry.name in skip:
                    continue
                fs.create_dir(f"{target}/{entry.name}" if entry.is_dir() else target, recursive=True)
                pyarrow.fs.copy_files(str(entry), f"{target}/{entry.name}", destination_filesystem=fs)
            self._seen["run_folder"] = True

        self._retry("upload", relative, copy, local=local)

    def download(self, relative: str, local: Path) -> bool:
        """Copy ``<root>/<relative>`` into the folder ``local``; False if it is not in storage."""
        import pyarrow.fs

        def copy() -> bool:
            if not self._exists(relative):
                return False
            fs, base = self._fs()
            source = f"{base}/{relative}".rstrip("/")
            Path(local).mkdir(parents=True, exist_ok=True)
            pyarrow.fs.copy_files(source, str(local), source_filesystem=fs,
                                  destination_filesystem=pyarrow.fs.LocalFileSystem())
            return True

        return self._retry("download", relative, copy, local=Path(local))
