"""Where MLflow data go: the URI policy (default: a sqlite store in the run directory), the health check of a tracking
server, and the client."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"

_LOCAL_SCHEMES = ("sqlite", "file", "")


def default_tracking_uri(run_dir: Path) -> str:
    """``sqlite:///<absolute run dir>/mlflow.db``."""
    return f"sqlite:///{(Path(run_dir).expanduser().resolve() / DB_FILE).as_posix()}"


def _scheme(uri: str) -> str:
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    return "" if len(scheme) == 1 else scheme  # "C:/..." is a path


def is_local_uri(uri: str) -> bool:
    """A store only this machine can write: sqlite, file:// or a plain path."""
    return _scheme(uri) in _LOCAL_SCHEMES


def absolute_local_uri(uri: str) -> str:
    """Make relative sqlite/file/path URIs absolute: Ray trials run in other working directories."""
    scheme = _scheme(uri)
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path or path.startswith("/") or path == ":memory:":
            return uri
        return f"sqlite:///{Path(path).expanduser().resolve().as_posix()}"
    if scheme == "":
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def resolve_tracking_uri(flag: str | None, run_dir: Path) -> str:
    """``flag`` > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///<run dir>/mlflow.db``. A local store serves clusters too:
    only the driver writes it (trials report to the driver), and it travels with the run directory."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(run_dir)
    return absolute_local_uri(uri.strip())


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """For ``http(s)://`` URIs: raise a ``ConnectionError`` naming the URI when no MLflow server answers.

    MLflow's own client retries for minutes; this checks once, before any trial starts. Other URIs pass.
    """
    if _scheme(uri) not in ("http", "https"):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) checked above
            body = response.read(200).decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        raise ConnectionError(
            f"the MLflow tracking server at {uri} answered {exc.code} {exc.reason} on /health; is it an MLflow "
            "server (and the right URL)?") from None
    except (urllib.error.URLError, OSError, socket.timeout) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(
            f"cannot reach the MLflow tracking server at {uri}: {reason}. Start it (`mlflow server "
            "--backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`; for other machines to log to it, "
            "bind an address of a private network instead of 127.0.0.1 — the server has no password, so whoever "
            "reaches the port can read and delete every run), fix --tracking-uri / MLFLOW_TRACKING_URI, or leave "
            "both unset to track into the run directory.") from None
    if body and body.upper() != "OK":
        raise ConnectionError(f"{uri} answered {body[:80]!r} on /health, not an MLflow tracking server")


def client_for(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri if is_local_uri(uri) else None)


def artifact_location(uri: str) -> str | None:
    """Artifacts of a sqlite store go beside its database (``<run dir>/mlartifacts``), never into the working
    directory (MLflow's default ``./mlruns``)."""
    scheme = _scheme(uri)
    if scheme == "sqlite" and uri.startswith("sqlite:////"):
        return (Path(uri[len("sqlite:///"):]).parent / ARTIFACTS_DIR).as_uri()
    return None  # a file store keeps artifacts inside itself; a server decides for itself
