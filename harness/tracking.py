"""MLflow tracking: one experiment per suite, one parent run per run directory, one child run per trial.

Layout (see DESIGN.md, "Tracking and provenance")::

    experiment  = suite name                      created once, by the driver (start_run_tracking)
    parent run  = one run directory               tags: suite hashes, git commit, versions, executor, cluster;
                                                  artifacts: suite/ (resolved suite.yaml, the suite file, run.json),
                                                  cluster/ (the cluster YAML, if any)
    child run   = one trial (TrialTracker)        tag mlflow.parentRunId, harness.trial_id; run name = spec.name;
                                                  flat params with the same keys in every trial of the suite;
                                                  losses per step, final metrics (+ ``<key>_std``), final losses
                                                  (``final/<key>``), wall times (``time/<key>``), the sample grid
                                                  as a stepped image (key ``samples``) and artifacts result.json,
                                                  samples.png, shots.png

Store: ``sqlite:///<run dir>/mlflow.db`` with artifacts in ``<run dir>/mlartifacts`` by default (never the working
directory); an ``http(s)://`` tracking server for clusters (trials on other nodes cannot write the driver's file).

Resume: a run directory keeps its parent run. ``start_run_tracking`` records the parent in ``<run dir>/tracking.json``
(per tracking URI); a later invocation with the same ``--run-dir`` and store reopens that parent (status RUNNING,
``harness.invocations`` incremented) instead of creating a second one, so one run directory = one parent run and each
trial has exactly one child run under it: ``TrialTracker.start`` finds the child by its ``harness.trial_id`` tag under
the parent (a resumed or retried trial logs into it) and creates it only when there is none.

Tracking never costs a trial its result: every ``TrialTracker`` method logs a warning on error and disables itself
for the rest of the trial; ``result.json`` is always written locally by ``run_trial``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.runtime import git_commit, package_versions

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from harness.suite import Suite, TrialSpec
    from harness.results import TrialResult

log = logging.getLogger(__name__)

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
TRACKING_FILE = "tracking.json"

PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
TRIAL_ID_TAG = "harness.trial_id"
KIND_TAG = "harness.kind"  # "suite" (parent) or "trial" (child)
STATUS_TAG = "harness.status"  # a trial's status: running / ok / failed / stopped
ERROR_TAG = "harness.error"
META_TAG = "harness.meta"  # JSON: metric directions etc. (split over META_TAG.<i> when long), read by report.py
SAMPLES_IMAGE_KEY = "samples"
NOT_APPLICABLE = "n/a"  # value of a suite-wide param key a trial's method does not have

_LOCAL_SCHEMES = ("sqlite", "file", "")
_MAX_PARAMS = 100  # per log_batch call (MLflow's limit for params and tags)
_MAX_METRICS = 1000
_MAX_PARAM_LEN = 6000
_MAX_TAG_LEN = 8000
_META_CHUNK = 7000
_FLUSH_EVERY = 500  # buffered loss values
_FLUSH_SECONDS = 15.0


@dataclass(frozen=True)
class TrackingContext:
    """Where a trial logs: picklable, so it crosses to Ray workers. ``param_keys`` are the flat param keys every
    trial of the suite logs (the union over the suite's methods), so the MLflow compare view lines trials up."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    param_keys: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------------------- URIs


def default_tracking_uri(run_dir: Path) -> str:
    """``sqlite:///<absolute run dir>/mlflow.db``."""
    return f"sqlite:///{(Path(run_dir).expanduser().resolve() / DB_FILE).as_posix()}"


def _scheme(uri: str) -> str:
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    return "" if len(scheme) == 1 else scheme  # "C:/..." is a path


def is_local_uri(uri: str) -> bool:
    """A store only this machine can write: sqlite, file:// or a plain path."""
    return _scheme(uri) in _LOCAL_SCHEMES


def _absolute_local_uri(uri: str) -> str:
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


def resolve_tracking_uri(flag: str | None, run_dir: Path, *, cluster: bool) -> str:
    """``flag`` > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///<run dir>/mlflow.db``.

    With ``cluster=True`` (trials may run on other machines) a local store is refused with the reason.
    """
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(run_dir)
    uri = _absolute_local_uri(uri.strip())
    if cluster and is_local_uri(uri):
        where = "--tracking-uri" if flag else "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") \
            else "the default store"
        raise ValueError(
            f"MLflow tracking URI {uri!r} ({where}) is a file on this machine: trials running on other nodes of the "
            "cluster cannot write the driver's local file. Start a tracking server reachable from every node "
            "(e.g. `mlflow server --backend-store-uri sqlite:///mlflow.db --host 0.0.0.0 --port 5000`) and pass "
            "--tracking-uri http://<host>:5000 (or set MLFLOW_TRACKING_URI)."
        )
    return uri


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
            "--backend-store-uri sqlite:///mlflow.db --host 0.0.0.0 --port 5000`), fix --tracking-uri / "
            "MLFLOW_TRACKING_URI, or leave both unset to track into the run directory.") from None
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


# ------------------------------------------------------------------------------------------------- flat params


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, (bool, int, float)):
        text = str(value)
    else:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return text if len(text) <= _MAX_PARAM_LEN else text[: _MAX_PARAM_LEN - 1] + "…"


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Nested dicts → ``prefix.key.sub`` string params; lists and scalars are leaves."""
    if isinstance(value, dict):
        if not value:
            return {prefix: "{}"} if prefix else {}
        out: dict[str, str] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return out
    return {prefix: _param_value(value)}


def _resolved_config(method: str, params: dict[str, Any]) -> dict[str, Any]:
    from harness.registry import METHODS

    return METHODS.get(method).Config(**params).model_dump(mode="json")


def spec_params(spec: TrialSpec) -> dict[str, str]:
    """The params a trial logs before its data are loaded (all derived from the spec)."""
    params = {
        "suite": spec.suite,
        "suite_version": str(spec.suite_version),
        "trial_id": spec.trial_id,
        "method": spec.method,
        "label": spec.label,
        "shots": str(spec.shots),
        "seed": str(spec.seed),
        "dataset": spec.dataset.name,
        "source": spec.dataset.source,
        "base_classes": _param_value(list(spec.base_classes)),
        "novel_classes": _param_value(list(spec.novel_classes)),
        "eval_images_per_class": _param_value(spec.eval_images_per_class),
        "base_images_per_class": _param_value(spec.base_images_per_class),
    }
    params.update(flatten("dataset", spec.dataset.model_dump(mode="json", exclude={"name", "source"})))
    params.update(flatten("budget", spec.budget.model_dump(mode="json")))
    params.update(flatten("evaluation", spec.evaluation.model_dump(mode="json")))
    params.update(flatten("resources", spec.resources.model_dump(mode="json")))
    try:
        params.update(flatten("hp", _resolved_config(spec.method, spec.params)))
    except Exception:  # noqa: BLE001 - an unknown method fails the trial itself; set_config logs what it gets
        pass
    return params


SPLIT_PARAMS = ("data_source", "split_hash", "dataset_fingerprint")


def suite_param_keys(suite: Suite) -> tuple[str, ...]:
    """Every param key any trial of ``suite`` logs: the union over its methods (and shots/seeds)."""
    from harness.suite import trial_spec

    keys: set[str] = set(SPLIT_PARAMS)
    for entry in suite.methods:
        spec = trial_spec(suite, entry, suite.protocol.shots[0], suite.protocol.seeds[0])
        keys.update(spec_params(spec))
        if suite.sweep is not None and suite.sweep.method == entry.display:
            keys.update(f"hp.{k}" for k in suite.sweep.space)
    return tuple(sorted(keys))


# --------------------------------------------------------------------------------------------- metric names


_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def mlflow_key(key: str) -> str:
    """A valid MLflow metric/param name for ``key`` (``fid/class_5`` stays as it is)."""
    name = _BAD_CHARS.sub("_", str(key))
    name = re.sub(r"/+", "/", name).strip("/ ")
    parts = [p if p not in (".", "..") else p.replace(".", "_") for p in name.split("/")]
    name = "/".join(parts) or "_"
    return name[:250]


def metric_meta(result: TrialResult) -> dict[str, Any]:
    """What report.py needs beside the metric values to rebuild a trial from MLflow: per metric key
    ``[higher_is_better, reference, registry metric, has_std]``, and the final-loss keys."""
    metrics = {
        key: [entry.get("higher_is_better"), bool(entry.get("reference", False)), entry.get("metric"),
              entry.get("std") is not None]
        for key, entry in result.metrics.items()
        if isinstance(entry, dict) and entry.get("value") is not None
    }
    return {"metrics": metrics, "final_losses": sorted(result.final_losses),
            "wall_times": sorted(k for k in result.wall_times if k.endswith("_s"))}


def read_meta(tags: dict[str, str]) -> dict[str, Any]:
    """The inverse of the chunked META_TAG tags."""
    if META_TAG in tags:
        return json.loads(tags[META_TAG])
    chunks = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in tags.items()
                    if k.startswith(META_TAG + ".") and k.rsplit(".", 1)[1].isdigit())
    return json.loads("".join(v for _, v in chunks)) if chunks else {}


def _meta_tags(meta: dict[str, Any]) -> dict[str, str]:
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    if len(text) <= _META_CHUNK:
        return {META_TAG: text}
    return {f"{META_TAG}.{i}": text[i * _META_CHUNK:(i + 1) * _META_CHUNK]
            for i in range(math.ceil(len(text) / _META_CHUNK))}


def _tag_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= _MAX_TAG_LEN else text[: _MAX_TAG_LEN - 1] + "…"


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _log_params(client: MlflowClient, run_id: str, params: dict[str, str], existing: dict[str, str]) -> list[str]:
    """Log the params ``run_id`` does not have yet; never re-log one (MLflow params are immutable). Returns the keys
    whose stored value differs (left as they are)."""
    from mlflow.entities import Param

    new = {k: v for k, v in params.items() if k not in existing}
    conflicts = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
    for chunk in _chunks(sorted(new.items()), _MAX_PARAMS):
        client.log_batch(run_id, params=[Param(mlflow_key(k), v) for k, v in chunk], synchronous=True)
    existing.update(new)
    return conflicts


def _log_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    for chunk in _chunks(sorted(tags.items()), _MAX_PARAMS):
        client.log_batch(run_id, tags=[RunTag(k, _tag_value(v)) for k, v in chunk], synchronous=True)


def _log_metrics(client: MlflowClient, run_id: str, metrics: list[Any]) -> None:
    for chunk in _chunks(metrics, _MAX_METRICS):
        client.log_batch(run_id, metrics=chunk, synchronous=True)


# -------------------------------------------------------------------------------------------------- parent run


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_tracking_file(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / TRACKING_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_tracking_file(run_dir: Path, data: dict[str, Any]) -> None:
    path = Path(run_dir) / TRACKING_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment ``name`` (restored if it was deleted), created with its artifacts beside a local store."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(uri),
                                            tags={"harness.suite": name})
        except MlflowException:  # created meanwhile by another driver
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _existing_parent(client: MlflowClient, run_id: str | None, experiment_id: str) -> Any:
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    if run.info.lifecycle_stage != "active" or run.info.experiment_id != experiment_id:
        return None
    return run


def start_run_tracking(
    suite: Suite,
    suite_file: Path,
    run_dir: Path,
    tracking_uri: str,
    *,
    executor: str,
    cluster_name: str | None = None,
    cluster_file: Path | None = None,
) -> TrackingContext:
    """Driver only, before any trial: the experiment (= suite name) and this run directory's parent run.

    A run directory that already has a parent run in this store (``tracking.json``; a resumed ``--run-dir``) reopens
    it; otherwise a new parent run is created. Its tags name the suite (file hash, resolved-suite hash, version), the
    git commit, package versions, executor and cluster; its artifacts hold the resolved suite, the suite file as
    given, run.json and the cluster YAML.
    """
    from harness.suite import suite_hash

    run_dir = Path(run_dir).resolve()
    client = client_for(tracking_uri)
    experiment_id = get_or_create_experiment(client, suite.name, tracking_uri)
    record = _read_tracking_file(run_dir)
    previous = record.get("stores", {}).get(tracking_uri, {})
    parent = _existing_parent(client, previous.get("parent_run_id"), experiment_id)
    versions = package_versions()
    tags: dict[str, Any] = {
        KIND_TAG: "suite",
        "harness.suite": suite.name,
        "harness.suite_version": str(suite.version),
        "harness.suite_hash": suite_hash(suite),
        "harness.suite_file": str(suite_file),
        "harness.suite_file_sha256": _file_sha256(suite_file) if Path(suite_file).is_file() else "unknown",
        "harness.run_dir": str(run_dir),
        "harness.executor": executor,
        "harness.cluster_name": cluster_name or "",
        "harness.command": shlex.join(sys.argv),
        "harness.host": socket.gethostname(),
        "harness.git_commit": git_commit(),
        "mlflow.source.git.commit": git_commit(),
        "mlflow.source.name": "harness",
        **{f"version.{name}": v for name, v in versions.items()},
    }
    if parent is None:
        parent = client.create_run(experiment_id, run_name=f"{suite.name}-{run_dir.name}",
                                   tags={**tags, "harness.invocations": "1"})
        invocations = 1
    else:
        invocations = int(parent.data.tags.get("harness.invocations", "1")) + 1
        client.update_run(parent.info.run_id, status="RUNNING")
        tags["harness.invocations"] = str(invocations)
        _log_tags(client, parent.info.run_id, tags)
        log.info("resuming MLflow parent run %s (invocation %d)", parent.info.run_id, invocations)
    run_id = parent.info.run_id
    suite_params = flatten("", {k: v for k, v in suite.model_dump(mode="json", by_alias=True).items()
                                if k not in ("methods", "description")})
    suite_params["methods"] = _param_value([m.display for m in suite.methods])
    conflicts = _log_params(client, run_id, suite_params, dict(parent.data.params))
    if conflicts:
        log.warning("parent run %s keeps its earlier values of params %s", run_id, conflicts)
    for path, folder in ((run_dir / "suite.yaml", "suite"), (Path(suite_file), "suite/file"),
                         (run_dir / "run.json", "suite"), (cluster_file, "cluster")):
        if path is not None and Path(path).is_file():
            client.log_artifact(run_id, str(path), folder)
    context = TrackingContext(tracking_uri, experiment_id, run_id, suite_param_keys(suite))
    stores = {**record.get("stores", {}),
              tracking_uri: {"experiment_id": experiment_id, "parent_run_id": run_id, "invocations": invocations}}
    _write_tracking_file(run_dir, {"last": tracking_uri, "stores": stores})
    return context


def finish_run_tracking(context: TrackingContext, status: str) -> None:
    """End the parent run (``FINISHED`` / ``FAILED`` / ``KILLED``), tagged with its trials' outcome.

    Called from a ``finally``: a tracking problem here is logged, never raised (the results are on disk)."""
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"status must be FINISHED, FAILED or KILLED, not {status!r}")
    try:
        check_tracking_server(context.tracking_uri)
        client = client_for(context.tracking_uri)
        try:
            counts = {"ok": 0, "failed": 0, "running": 0}
            for run in child_runs(client, context):
                state = run.data.tags.get(STATUS_TAG, "running")
                counts[state if state in counts else "running"] += 1
            _log_tags(client, context.parent_run_id, {f"harness.trials_{k}": str(v) for k, v in counts.items()})
        finally:
            client.set_terminated(context.parent_run_id, status)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not close the MLflow parent run %s at %s: %s: %s", context.parent_run_id,
                    context.tracking_uri, type(exc).__name__, exc)


def child_runs(client: MlflowClient, context: TrackingContext, trial_id: str | None = None) -> list[Any]:
    """The child runs of ``context``'s parent (all, or those of one trial), oldest first."""
    filters = [f"tags.`{PARENT_TAG}` = '{context.parent_run_id}'"]
    if trial_id is not None:
        filters.append(f"tags.`{TRIAL_ID_TAG}` = '{trial_id}'")
    runs, token = [], None
    while True:
        page = client.search_runs([context.experiment_id], " and ".join(filters), max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


# ---------------------------------------------------------------------------------------------------- trials


class TrialTracker:
    """Logs one trial into its child run, from whatever process runs the trial. Never raises: an MLflow error logs a
    warning and disables the tracker for the rest of the trial (the local result.json is unaffected)."""

    def __init__(self, context: TrackingContext | None, spec: TrialSpec) -> None:
        self.context = context
        self.spec = spec
        self.run_id: str | None = None
        self.disabled = context is None
        self._client: MlflowClient | None = None
        self._params: dict[str, str] = {}
        self._buffer: list[Any] = []
        self._last_flush = time.monotonic()
        self._samples_logged = False

    # -- plumbing
    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            assert self.context is not None
            self._client = client_for(self.context.tracking_uri)
        return self._client

    def _guard(self, what: str, fn, *args: Any) -> Any:
        if self.disabled or (self.run_id is None and what != "start"):
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a trial
            self.disabled = True
            log.warning("MLflow tracking of trial %s disabled after an error in %s: %s: %s",
                        self.spec.name, what, type(exc).__name__, exc)
            return None

    # -- API
    def start(self) -> None:
        """Find this trial's child run under the parent (by ``harness.trial_id``) or create it; log the spec params."""
        self._guard("start", self._start)

    def _start(self) -> None:
        assert self.context is not None
        check_tracking_server(self.context.tracking_uri)  # fail in seconds, not after MLflow's minutes of retries
        client = self.client
        existing = child_runs(client, self.context, self.spec.trial_id)
        if existing:
            run = existing[0]
            if len(existing) > 1:
                log.warning("trial %s has %d child runs; logging into the first", self.spec.name, len(existing))
            self.run_id = run.info.run_id
            self._params = dict(run.data.params)
            attempts = int(run.data.tags.get("harness.attempts", "1")) + 1
            client.update_run(self.run_id, status="RUNNING")
            _log_tags(client, self.run_id, {STATUS_TAG: "running", "harness.attempts": str(attempts)})
        else:
            run = client.create_run(
                self.context.experiment_id, run_name=self.spec.name,
                tags={PARENT_TAG: self.context.parent_run_id, TRIAL_ID_TAG: self.spec.trial_id, KIND_TAG: "trial",
                      STATUS_TAG: "running", "harness.label": self.spec.label, "harness.attempts": "1",
                      "harness.git_commit": git_commit(), "mlflow.source.git.commit": git_commit(),
                      "harness.host": socket.gethostname()},
            )
            self.run_id = run.info.run_id
        self._log_params(spec_params(self.spec))

    def _log_params(self, params: dict[str, str]) -> None:
        assert self.run_id is not None
        conflicts = _log_params(self.client, self.run_id, params, self._params)
        if conflicts:
            log.warning("trial %s: params %s already logged with other values; kept the earlier ones",
                        self.spec.name, conflicts)

    def set_config(self, method_config: dict[str, Any], provenance: dict[str, Any]) -> None:
        """After the split: the resolved method config (``hp.*``) and the data provenance params."""
        def _set() -> None:
            params = flatten("hp", method_config)
            params.update({k: _param_value(provenance.get(k)) for k in SPLIT_PARAMS})
            self._log_params(params)

        self._guard("set_config", _set)

    def log_losses(self, step: int, losses: dict[str, float], info: dict[str, Any] | None = None) -> None:
        """Buffer one loss record (per-class keys ``<loss>/class_<c>`` when ``info`` names a class); flushed in
        batches."""
        if self.disabled or self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        label = (info or {}).get("class")
        suffix = f"/class_{label}" if label is not None else ""
        for key, value in losses.items():
            self._buffer.append(Metric(mlflow_key(f"{key}{suffix}"), float(value), now, int(step)))
        if len(self._buffer) >= _FLUSH_EVERY or time.monotonic() - self._last_flush > _FLUSH_SECONDS:
            self.flush()

    def log_evaluation(self, step: int, values: dict[str, float]) -> None:
        """Intermediate metric values (a sweep's early stopping) as ``eval/<metric>`` at ``step``: the UI plots how
        a trial's metric evolved."""
        if self.disabled or self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer += [Metric(mlflow_key(f"eval/{key}"), float(value), now, int(step))
                         for key, value in values.items()]
        self.flush()

    def flush(self) -> None:
        def _flush() -> None:
            buffer, self._buffer = self._buffer, []
            self._last_flush = time.monotonic()
            _log_metrics(self.client, self.run_id, buffer)

        if self._buffer:
            self._guard("log_losses", _flush)

    def log_samples(self, image_path: Path, step: int) -> None:
        """The sample grid as a stepped image (key ``samples``): the UI's image view steps through it."""
        def _log() -> None:
            from PIL import Image

            with Image.open(image_path) as image:
                self.client.log_image(self.run_id, image.convert("RGB"), key=SAMPLES_IMAGE_KEY, step=int(step),
                                      synchronous=True)
            self._samples_logged = True

        self.flush()
        if Path(image_path).is_file():
            self._guard("log_samples", _log)

    def finish(self, result: TrialResult, trial_dir: Path) -> None:
        """Final metrics (+ ``<key>_std``), final losses, wall times, status, artifacts; end the run."""
        self.flush()
        self._guard("finish", self._finish, result, Path(trial_dir))

    def _finish(self, result: TrialResult, trial_dir: Path) -> None:
        from mlflow.entities import Metric

        client, run_id = self.client, self.run_id
        assert run_id is not None and self.context is not None
        # identical param keys in every trial: fill what this trial never reached (e.g. failed before its split)
        expected = set(self.context.param_keys) | set(SPLIT_PARAMS) | set(spec_params(self.spec))
        missing = {k: NOT_APPLICABLE for k in expected if mlflow_key(k) not in self._params and k not in self._params}
        if missing:
            self._log_params(missing)
        now = int(time.time() * 1000)
        step = max((int(r.get("step", 0)) for r in result.losses), default=0)
        metrics = []
        for key, entry in result.metrics.items():
            if not isinstance(entry, dict) or entry.get("value") is None:
                continue
            metrics.append(Metric(mlflow_key(key), float(entry["value"]), now, step))
            if entry.get("std") is not None:
                metrics.append(Metric(mlflow_key(key) + "_std", float(entry["std"]), now, step))
        metrics += [Metric(mlflow_key(f"final/{k}"), float(v), now, step) for k, v in result.final_losses.items()]
        metrics += [Metric(mlflow_key(f"time/{k}"), float(v), now, step)
                    for k, v in result.wall_times.items() if k.endswith("_s")]
        _log_metrics(client, run_id, metrics)
        provenance = result.provenance or {}
        tags = {STATUS_TAG: result.status, ERROR_TAG: result.error or "", **_meta_tags(metric_meta(result))}
        for key in ("evaluator", "evaluator_hash", "evaluator_test_accuracy", "host", "device", "git_commit",
                    "method_target", "resumed"):
            if provenance.get(key) is not None:
                tags[f"harness.{key}"] = _param_value(provenance[key])
        for name, v in (provenance.get("versions") or {}).items():
            tags[f"version.{name}"] = v
        _log_tags(client, run_id, tags)
        if not self._samples_logged and (trial_dir / "samples.png").is_file():  # e.g. a trial that was not wired
            from PIL import Image

            with Image.open(trial_dir / "samples.png") as image:
                client.log_image(run_id, image.convert("RGB"), key=SAMPLES_IMAGE_KEY, step=step, synchronous=True)
        for name in ("result.json", "samples.png", "shots.png"):
            if (trial_dir / name).is_file():
                client.log_artifact(run_id, str(trial_dir / name))
        client.set_terminated(run_id, {"ok": "FINISHED", "stopped": "KILLED"}.get(result.status, "FAILED"))


# ------------------------------------------------------------------------------------------------------- UI


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


def serve_ui(run_dir: Path | None, port: int = 5000, host: str = "127.0.0.1") -> None:
    """Start the MLflow UI on the store of ``run_dir`` (default: ``$MLFLOW_TRACKING_URI`` if it is a local store,
    else the newest run directory under ``runs/``), print its URL and serve until Ctrl+C."""
    if run_dir is None:
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env and not is_local_uri(env):
            print(f"MLFLOW_TRACKING_URI points at a tracking server: open {env}")
            return
        if env:
            uri, cwd = _absolute_local_uri(env), Path.cwd()
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
    # the server's working directory is the run directory, so nothing lands in the caller's cwd
    artifacts = cwd / ARTIFACTS_DIR
    command = ui_command(uri, port, host, artifacts)
    # a local UI needs no background job runner (GenAI jobs: a dozen worker processes)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
                                                                               "false")}
    process = subprocess.Popen(command, cwd=cwd, env=env)
    shown = f"[{host}]" if ":" in host else host
    print(f"MLflow UI for {uri}: http://{shown}:{port}  (Ctrl+C stops it)", flush=True)
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


def iter_children_by_trial(client: MlflowClient, context: TrackingContext) -> dict[str, list[Any]]:
    """Child runs grouped by trial id (tests and reports check there is one per trial)."""
    grouped: dict[str, list[Any]] = {}
    for run in child_runs(client, context):
        grouped.setdefault(run.data.tags.get(TRIAL_ID_TAG, ""), []).append(run)
    return grouped
