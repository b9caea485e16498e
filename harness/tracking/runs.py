"""MLflow runs: one experiment per suite, one parent run per run directory, one child run per trial.

Layout (see DESIGN.md, "Tracking and provenance")::

    experiment  = suite name                      created once, by the driver (start_run_tracking)
    parent run  = one run directory               tags: suite hashes, git commit, versions, executor, cluster;
                                                  artifacts: suite/ (resolved suite.yaml, the suite file, run.json),
                                                  cluster/ (the cluster YAML, if any)
    child run   = one trial (TrialTracker)        tag mlflow.parentRunId, harness.trial_id; run name = spec.name;
                                                  flat params with the same keys in every trial of the suite;
                                                  losses per step, final metrics (+ ``<key>_std``), final losses
                                                  (``final/<key>``), wall times (``time/<key>``), the sample grid
                                                  as a stepped image (key ``samples``) and artifacts result.json
                                                  (what reports read back), samples.png, shots.png

Only the driver writes: trials report to it (in-process directly, under Ray through Tune's results), so workers need
no MLflow access and a sqlite store in the run directory serves clusters too.

Resume: a run directory keeps its parent run. ``start_run_tracking`` records the parent in ``<run dir>/tracking.json``
(per tracking URI); a later invocation with the same ``--run-dir`` and store reopens that parent (status RUNNING,
``harness.invocations`` incremented) instead of creating a second one, so one run directory = one parent run and each
trial has exactly one child run under it: ``TrialTracker.start`` finds the child by its ``harness.trial_id`` tag under
the parent (a resumed or retried trial logs into it) and creates it only when there is none.

Tracking never costs a trial its result: every ``TrialTracker`` method logs a warning on error and disables itself
for the rest of the trial; ``result.json`` is always written by ``run_trial``. An unreachable tracking server is not
such an error: the driver keeps the writes and writes them into the same runs once it answers
(:mod:`harness.tracking.outbox`).

Re-scoring (`harness evaluate`) logs into the same child runs (:func:`log_metrics_version`): the new values as the
latest values of their keys at the trial's final step (MLflow keeps the earlier ones in each key's history), the
version's number and evaluator hash as tags, and the updated ``result.json``; it never creates a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shlex
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.files import DamagedFile, read_json_object, set_aside, write_json
from harness.runtime import git_commit, package_versions
from harness.tracking.params import (
    SPLIT_PARAMS, _param_value, flatten, mlflow_key, spec_params, suite_param_keys,
)
from harness.tracking.uri import ARTIFACTS_DIR, DB_FILE, artifact_location, check_tracking_server, client_for

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from harness.metrics.value import MetricValue
    from harness.results import TrialResult
    from harness.suite import Suite, TrialSpec

log = logging.getLogger(__name__)

TRACKING_FILE = "tracking.json"

PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
TRIAL_ID_TAG = "harness.trial_id"
KIND_TAG = "harness.kind"  # "suite" (parent) or "trial" (child)
STATUS_TAG = "harness.status"  # a trial's status: running / ok / failed / stopped
ERROR_TAG = "harness.error"
REFERENCE_TAG = "harness.reference"  # only on a `data: full` trial's run: an oracle reference, not a few-shot method
SAMPLES_IMAGE_KEY = "samples"
# MLflow 3's UI opens an experiment by its kind: without it, on the GenAI "Traces" overview; with it, on the runs table
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

_MAX_PARAMS = 100  # per log_batch call (MLflow's limit for params and tags)
_MAX_METRICS = 1000
_MAX_TAG_LEN = 8000
_FLUSH_EVERY = 500  # buffered loss values
_FLUSH_SECONDS = 15.0


@dataclass(frozen=True)
class TrackingContext:
    """The parent run trials are tracked under. ``param_keys`` are the flat param keys every trial of the suite
    logs (the union over the suite's methods), so the MLflow compare view lines trials up. ``run_dir``: where the
    driver keeps writes a tracking server could not take (:mod:`harness.tracking.outbox`); without it, writes are
    live only."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    param_keys: tuple[str, ...] = ()
    run_dir: str | None = None


def reference_tags(spec: TrialSpec) -> dict[str, str]:
    """The tag that marks an oracle reference trial (``data: full``) in the MLflow UI; none for a few-shot trial."""
    if not spec.reference:
        return {}
    return {REFERENCE_TAG: "full data: every training image of the novel classes (oracle reference, never ranked)"}


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
    """The run directory's record of its MLflow runs, or {} when there is none. A damaged one is set aside with a
    warning (the run then gets a new parent run; the old one stays in MLflow, findable by the run directory's tag)."""
    path = Path(run_dir) / TRACKING_FILE
    if not path.exists():
        return {}
    try:
        return read_json_object(path)
    except DamagedFile as exc:
        kept = set_aside(path, "damaged")
        log.warning("%s; MLflow tracking starts a new parent run for this run directory (the damaged file is kept "
                    "as %s)", exc, kept.name)
        return {}


def _write_tracking_file(run_dir: Path, data: dict[str, Any]) -> None:
    write_json(Path(run_dir) / TRACKING_FILE, data)


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment ``name`` (restored if it was deleted), created with its artifacts beside a local store."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(uri),
                                            tags={"harness.suite": name, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # created meanwhile by another driver
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made by an older harness or by hand
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
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
    context = TrackingContext(tracking_uri, experiment_id, run_id, suite_param_keys(suite), run_dir=str(run_dir))
    _replay_earlier_writes(run_dir, context)
    stores = {**record.get("stores", {}),
              tracking_uri: {"experiment_id": experiment_id, "parent_run_id": run_id, "invocations": invocations}}
    _write_tracking_file(run_dir, {"last": tracking_uri, "stores": stores})
    return context


def _replay_earlier_writes(run_dir: Path, context: TrackingContext) -> None:
    """Writes an earlier invocation kept (its server was unreachable) go to their store before any new trial's: the
    same child runs, no duplicates. The end of this parent run is left to this invocation."""
    from harness.tracking.outbox import replay_pending

    for kept, written, left in replay_pending(run_dir, skip_parent_finish_of=context.parent_run_id):
        if written:
            log.warning("wrote %d tracking writes an earlier invocation kept for %s", written, kept.tracking_uri)
        if left:
            log.warning("%d tracking writes kept for %s are still unwritten (it does not answer); they stay in %s",
                        left, kept.tracking_uri, run_dir)


def finish_run_tracking(context: TrackingContext, status: str) -> int:
    """End the parent run (``FINISHED`` / ``FAILED`` / ``KILLED``), tagged with its trials' outcome. Returns how many
    tracking writes are still unwritten (the server stayed unreachable; they are kept in the run directory and the
    warning says how to write them).

    Called from a ``finally``: a tracking problem here is logged, never raised (the results are on disk)."""
    from harness.tracking.outbox import Applier, outbox_for

    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"status must be FINISHED, FAILED or KILLED, not {status!r}")
    box = outbox_for(context)
    try:
        if box is None:
            check_tracking_server(context.tracking_uri)
            Applier(context).apply({"op": "parent_finish", "status": status})
        else:
            box.submit({"op": "parent_finish", "status": status})
    except Exception as exc:  # noqa: BLE001
        log.warning("could not close the MLflow parent run %s at %s: %s: %s", context.parent_run_id,
                    context.tracking_uri, type(exc).__name__, exc)
    if box is None:
        return 0
    left = box.close()
    if left:
        log.warning(box.unwritten_message(Path(context.run_dir or ".")))
    return left


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


def iter_children_by_trial(client: MlflowClient, context: TrackingContext) -> dict[str, list[Any]]:
    """Child runs grouped by trial id (tests and reports check there is one per trial)."""
    grouped: dict[str, list[Any]] = {}
    for run in child_runs(client, context):
        grouped.setdefault(run.data.tags.get(TRIAL_ID_TAG, ""), []).append(run)
    return grouped


def relocate_store(run_dir: Path) -> bool:
    """Point a run directory's sqlite store at the artifacts beside it again, after the directory was moved or
    fetched from a cluster's storage (MLflow records absolute artifact URIs: the job's path on the head). Returns
    whether anything was rewritten."""
    import sqlite3

    run_dir = Path(run_dir).resolve()
    db, here = run_dir / DB_FILE, (run_dir / ARTIFACTS_DIR).as_uri()
    if not db.is_file():
        return False
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        locations = {row[0] for row in connection.execute("SELECT artifact_location FROM experiments")
                     if row[0] and row[0].rstrip("/").endswith("/" + ARTIFACTS_DIR)}
        moved = {old.rstrip("/") for old in locations if old.rstrip("/") != here}
        for old in moved:
            connection.execute("UPDATE experiments SET artifact_location = ? || substr(artifact_location, ?) "
                               "WHERE artifact_location LIKE ? || '%'", (here, len(old) + 1, old))
            connection.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                               "WHERE artifact_uri LIKE ? || '%'", (here, len(old) + 1, old))
    return bool(moved)


# ---------------------------------------------------------------------------------------------------- trials


class TrialTracker:
    """Logs one trial into its child run, from the driver. Never raises: an MLflow error logs a warning and disables
    the tracker for the rest of the trial (the local result.json is unaffected).

    Each write is an operation of :mod:`harness.tracking.outbox` that names the trial, not its run: with a context
    made by :func:`start_run_tracking` (it has the run directory) the driver's outbox applies it at once, or keeps it
    while the tracking server is unreachable and writes it later; an outage does not disable the tracker."""

    def __init__(self, context: TrackingContext | None, spec: TrialSpec) -> None:
        from harness.tracking.outbox import Applier, outbox_for

        self.context = context
        self.spec = spec
        self.disabled = context is None
        self.started = False
        self._outbox = outbox_for(context) if context is not None else None
        self._applier = self._outbox.applier if self._outbox is not None else (
            Applier(context) if context is not None else None)
        self._attempt = uuid.uuid4().hex  # a replayed start of this attempt is not counted as another attempt
        self._buffer: list[list[Any]] = []  # [key, value, timestamp ms, step]
        self._last_flush = time.monotonic()

    # -- plumbing
    @property
    def run_id(self) -> str | None:
        """The child run, once a write reached the store (None while it is unreachable since the trial started)."""
        return self._applier.run_ids.get(self.spec.trial_id) if self._applier is not None else None

    @property
    def client(self) -> MlflowClient:
        assert self._applier is not None
        return self._applier.client

    def _submit(self, op: str, **fields: Any) -> None:
        record = {"op": op, "trial": self.spec.trial_id, "name": self.spec.name, **fields}
        if self._outbox is not None:
            self._outbox.submit(record)
        else:
            assert self._applier is not None
            self._applier.apply(record)

    def _path(self, path: Path) -> str:
        """An artifact's path as an operation keeps it: relative to the run directory when under it (a spool file
        replayed after the directory moved still finds it)."""
        base = self._applier.base if self._applier is not None else None
        if base is not None:
            with contextlib.suppress(ValueError):
                return Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
        return str(Path(path).resolve())

    def _guard(self, what: str, fn, *args: Any) -> Any:
        if self.disabled or (not self.started and what != "start"):
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
        if self._outbox is None:  # no outbox to keep writes in: fail in seconds, not after MLflow's retries
            check_tracking_server(self.context.tracking_uri)
        self.started = True
        self._submit("start", attempt=self._attempt, params=spec_params(self.spec), tags={
            PARENT_TAG: self.context.parent_run_id, TRIAL_ID_TAG: self.spec.trial_id, KIND_TAG: "trial",
            STATUS_TAG: "running", "harness.label": self.spec.label, "harness.data": self.spec.data,
            **reference_tags(self.spec), "harness.git_commit": git_commit(), "mlflow.source.git.commit": git_commit(),
            "harness.host": socket.gethostname()})

    def set_config(self, method_config: dict[str, Any], provenance: dict[str, Any]) -> None:
        """After the split: the resolved method config (``hp.*``) and the data provenance params."""
        def _set() -> None:
            params = flatten("hp", method_config)
            params.update({k: _param_value(provenance.get(k)) for k in SPLIT_PARAMS})
            self._submit("params", params=params)

        self._guard("set_config", _set)

    def log_losses(self, step: int, losses: dict[str, float], info: dict[str, Any] | None = None) -> None:
        """Buffer one loss record (per-class keys ``<loss>/class_<c>`` when ``info`` names a class); flushed in
        batches."""
        if self.disabled or not self.started:
            return
        now = int(time.time() * 1000)
        label = (info or {}).get("class")
        suffix = f"/class_{label}" if label is not None else ""
        for key, value in losses.items():
            self._buffer.append([mlflow_key(f"{key}{suffix}"), float(value), now, int(step)])
        if len(self._buffer) >= _FLUSH_EVERY or time.monotonic() - self._last_flush > _FLUSH_SECONDS:
            self.flush()

    def log_evaluation(self, step: int, values: dict[str, float]) -> None:
        """Intermediate metric values (a sweep's early stopping) as ``eval/<metric>`` at ``step``: the UI plots how
        a trial's metric evolved."""
        if self.disabled or not self.started:
            return
        now = int(time.time() * 1000)
        self._buffer += [[mlflow_key(f"eval/{key}"), float(value), now, int(step)] for key, value in values.items()]
        self.flush()

    def flush(self) -> None:
        def _flush() -> None:
            buffer, self._buffer = self._buffer, []
            self._last_flush = time.monotonic()
            self._submit("metrics", metrics=buffer)

        if self._buffer:
            self._guard("log_losses", _flush)

    def finish(self, result: TrialResult, trial_dir: Path) -> None:
        """Final metrics (+ ``<key>_std``), final losses, wall times, status, artifacts; end the run."""
        self.flush()
        self._guard("finish", self._finish, result, Path(trial_dir))

    def _finish(self, result: TrialResult, trial_dir: Path) -> None:
        assert self.context is not None
        # identical param keys in every trial: fill what this trial never reached (e.g. failed before its split)
        expected = set(self.context.param_keys) | set(SPLIT_PARAMS) | set(spec_params(self.spec))
        self._submit("fill_params", keys=sorted(expected))
        now = int(time.time() * 1000)
        step = final_step(result)
        metrics = [[m.key, m.value, m.timestamp, m.step] for m in metric_entries(result.metrics, now, step)]
        metrics += [[mlflow_key(f"final/{k}"), float(v), now, step] for k, v in result.final_losses.items()]
        metrics += [[mlflow_key(f"time/{k}"), float(v), now, step]
                    for k, v in result.wall_times.items() if k.endswith("_s")]
        self._submit("metrics", metrics=metrics)
        provenance = result.provenance or {}
        tags = {STATUS_TAG: result.status, ERROR_TAG: result.error or ""}
        for key in ("evaluator", "evaluator_hash", "evaluator_test_accuracy", "host", "device", "git_commit",
                    "method_target", "resumed"):
            if provenance.get(key) is not None:
                tags[f"harness.{key}"] = _param_value(provenance[key])
        for name, v in (provenance.get("versions") or {}).items():
            tags[f"version.{name}"] = v
        self._submit("tags", tags=tags)
        if (trial_dir / "samples.png").is_file():  # a stepped image: the UI's image view steps through it
            self._submit("image", path=self._path(trial_dir / "samples.png"), key=SAMPLES_IMAGE_KEY,
                         step=self.spec.budget.steps)
        for name in ("result.json", "samples.png", "shots.png"):
            if (trial_dir / name).is_file():
                self._submit("artifact", path=self._path(trial_dir / name))
        self._submit("terminate", status={"ok": "FINISHED", "stopped": "KILLED"}.get(result.status, "FAILED"))


# ------------------------------------------------------------------------------------------------- re-scoring


def final_step(result: TrialResult) -> int:
    """The step a trial's final metrics are logged at: its last logged loss step."""
    return max((int(r.get("step", 0)) for r in result.losses), default=0)


def metric_entries(metrics: dict[str, MetricValue], timestamp: int, step: int) -> list[Any]:
    """MLflow ``Metric`` entries of metric values: each value, and ``<key>_std`` where it has one."""
    from mlflow.entities import Metric

    entries = []
    for key, value in metrics.items():
        entries.append(Metric(mlflow_key(key), value.value, timestamp, step))
        if value.std is not None:
            entries.append(Metric(mlflow_key(key) + "_std", value.std, timestamp, step))
    return entries


def run_dir_context(run_dir: Path, tracking_uri: str | None = None) -> TrackingContext | None:
    """The parent run a run directory's trials were tracked under (``tracking.json``: the store ``tracking_uri``,
    default the one last used), or None when the run was not tracked there."""
    record = _read_tracking_file(run_dir)
    uri = tracking_uri or record.get("last")
    store = record.get("stores", {}).get(uri) if uri else None
    if not store or not store.get("parent_run_id"):
        return None
    return TrackingContext(uri, str(store["experiment_id"]), str(store["parent_run_id"]))


def log_metrics_version(context: TrackingContext, result: TrialResult, trial_dir: Path,
                        values: dict[str, MetricValue], version: dict[str, Any]) -> str | None:
    """Log re-scored ``values`` (metrics version ``version``) into the trial's existing child run, with the updated
    ``result.json``; returns the run id, or None when the trial has no child run under the parent (none is made)."""
    client = client_for(context.tracking_uri)
    runs = child_runs(client, context, result.trial_id)
    if not runs:
        return None
    run_id = runs[0].info.run_id
    _log_metrics(client, run_id, metric_entries(values, int(time.time() * 1000), final_step(result)))
    _log_tags(client, run_id, {"harness.metrics_version": str(version["version"]),
                               "harness.metrics_version_evaluator_hash": version.get("evaluator_hash") or ""})
    if (Path(trial_dir) / "result.json").is_file():
        client.log_artifact(run_id, str(Path(trial_dir) / "result.json"))
    return run_id
