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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCHEMES_HINT = "s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, or file:///SHARED/MOUNT (a file system every node mounts)"


class StorageError(ValueError):
    """A storage URI that cannot serve a multi-node run; the message says why and what to pass instead."""


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
    """One run's folder in shared storage: ``<uri>/<key>``."""

    uri: str
    key: str

    @property
    def root(self) -> str:
        return f"{self.uri}/{self.key}"

    def tune_path(self) -> str:
        """Tune's ``storage_path``: Tune syncs experiment state and checkpoints there itself."""
        return f"{self.root}/ray"

    def _fs(self):
        import pyarrow.fs

        return pyarrow.fs.FileSystem.from_uri(self.root)

    def exists(self, relative: str = "") -> bool:
        import pyarrow.fs

        fs, base = self._fs()
        info = fs.get_file_info(f"{base}/{relative}".rstrip("/"))
        return info.type != pyarrow.fs.FileType.NotFound

    def read_text(self, relative: str) -> str | None:
        if not self.exists(relative):
            return None
        fs, base = self._fs()
        with fs.open_input_stream(f"{base}/{relative}") as stream:
            return stream.read().decode()

    def upload(self, local: Path, relative: str = "", *, skip: tuple[str, ...] = ()) -> None:
        """Copy the folder ``local`` to ``<root>/<relative>`` (files are overwritten; nothing is deleted).
        ``skip``: top-level entries of ``local`` not to copy (e.g. ``ray``, which Tune keeps in storage itself)."""
        import pyarrow.fs

        fs, base = self._fs()
        target = f"{base}/{relative}".rstrip("/")
        local = Path(local)
        for entry in sorted(local.iterdir()) if local.exists() else []:
            if entry.name in skip:
                continue
            fs.create_dir(f"{target}/{entry.name}" if entry.is_dir() else target, recursive=True)
            pyarrow.fs.copy_files(str(entry), f"{target}/{entry.name}", destination_filesystem=fs)

    def download(self, relative: str, local: Path) -> bool:
        """Copy ``<root>/<relative>`` into the folder ``local``; False if it is not in storage."""
        import pyarrow.fs

        if not self.exists(relative):
            return False
        fs, base = self._fs()
        source = f"{base}/{relative}".rstrip("/")
        Path(local).mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(source, str(local), source_filesystem=fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
        return True
