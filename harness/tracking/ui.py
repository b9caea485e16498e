"""``harness ui``: the MLflow UI on a run directory's store, opened on the suite's runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from harness.tracking.runs import _read_tracking_file
from harness.tracking.uri import ARTIFACTS_DIR, DB_FILE, absolute_local_uri, default_tracking_uri, is_local_uri


def run_dir_store(run_dir: Path) -> str:
    """The tracking URI a run directory was tracked into (``tracking.json``), else its default sqlite store."""
    record = _read_tracking_file(run_dir)
    return record.get("last") or default_tracking_uri(run_dir)


def _latest_run_dir(root: Path = Path("runs")) -> Path | None:
    dbs = sorted(root.glob(f"*/*/{DB_FILE}"), key=lambda p: p.stat().st_mtime)
    return dbs[-1].parent if dbs else None


def ui_command(uri: str, port: int, host: str, artifacts: Path | None) -> list[str]:
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--host", host, "--port", str(port), "--workers", "1"]
    if artifacts is not None:
        command += ["--artifacts-destination", artifacts.as_uri()]
    return command


def experiment_url(base: str, experiment_id: str) -> str:
    """The runs table of an experiment (parent run with its children), not MLflow 3's GenAI overview page."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"


def _mark_experiment(run_dir: Path, uri: str) -> str | None:
    """The experiment ``run_dir`` was tracked into, tagged as a model-training experiment (stores written by an
    older harness lack the tag, and MLflow's UI would open them on the Traces page)."""
    record = _read_tracking_file(run_dir).get("stores", {}).get(uri, {})
    experiment_id = record.get("experiment_id")
    if experiment_id is None:
        return None
    try:
        from harness.tracking.runs import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
        from harness.tracking.uri import client_for

        client_for(uri).set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except Exception as exc:  # noqa: BLE001 - the UI still opens; only the landing page differs
        print(f"could not tag experiment {experiment_id} as model training: {exc}")
    return str(experiment_id)


def exposure_warning(host: str, server: str, what: str) -> str | None:
    """What binding ``host`` exposes, when it is not this machine only (None for loopback): said whenever a server
    the harness starts is told to listen beyond 127.0.0.1, since none of them authenticates its users."""
    import ipaddress

    if host in ("localhost", ""):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:  # a host name: it resolves to some interface, possibly a public one
        pass
    reach = "every network this machine is on" if host in ("0.0.0.0", "::") else f"every machine that reaches {host}"
    return (f"warning: {server} listens on {host}: {reach} can {what}, without a password. Bind 127.0.0.1 and use "
            "an SSH tunnel (ssh -L PORT:127.0.0.1:PORT) to reach it from elsewhere, or keep it inside a private "
            "network.")


def serve_ui(run_dir: Path | None, port: int = 5000, host: str = "127.0.0.1") -> None:
    """Start the MLflow UI on the store of ``run_dir`` (default: ``$MLFLOW_TRACKING_URI`` if it is a local store,
    else the newest run directory under ``runs/``), print its URL and serve until Ctrl+C."""
    experiment_id = None
    if run_dir is None:
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env and not is_local_uri(env):
            print(f"MLFLOW_TRACKING_URI points at a tracking server: open {env}")
            return
        if env:
            uri, cwd = absolute_local_uri(env), Path.cwd()
        else:
            run_dir = _latest_run_dir()
            if run_dir is None:
                raise FileNotFoundError("no run directory with an MLflow store under runs/; give RUN_DIR")
    if run_dir is not None:
        run_dir = Path(run_dir).resolve()
        if not run_dir.is_dir():
            raise FileNotFoundError(f"{run_dir} is not a run directory")
        uri, cwd = run_dir_store(run_dir), run_dir
        if not is_local_uri(uri):
            print(f"{run_dir} was tracked on the server {uri}: open it there")
            return
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
            raise FileNotFoundError(f"{run_dir} has no MLflow store ({DB_FILE}); was it run with tracking?")
        experiment_id = _mark_experiment(run_dir, uri)
    # the server's working directory is the run directory, so nothing lands in the caller's cwd
    artifacts = cwd / ARTIFACTS_DIR
    command = ui_command(uri, port, host, artifacts)
    # a local UI needs no background job runner (GenAI jobs: a dozen worker processes)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
                                                                               "false")}
    process = subprocess.Popen(command, cwd=cwd, env=env)
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}"
    url = experiment_url(base, experiment_id) if experiment_id else base
    print(f"MLflow UI for {uri}: {url}  (Ctrl+C stops it)", flush=True)
    exposure = exposure_warning(host, "the MLflow UI", "read, edit and delete every run and artifact of this store")
    if exposure:
        print(exposure, file=sys.stderr, flush=True)
    previous = None
    if threading.current_thread() is threading.main_thread():  # `kill` stops the server too, not only Ctrl+C
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
