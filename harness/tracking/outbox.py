"""Tracking writes that outlive an MLflow server outage: the driver's outbox.

Every write the driver makes for a trial (create-or-find its child run, params, losses, final metrics, tags, images,
artifacts, the end of the run) is an *operation*: a small JSON record that names its trial by id, never by MLflow run
id. :class:`Applier` performs operations against a store; it is the one code path for live writes and for replays.

Why operations and not retries of MLflow calls: a write that fails because the server is down must be kept, and kept
beyond the driver's life (a driver killed during an outage would otherwise lose it), so it has to be data. Naming the
trial rather than its run keeps the one-child-run-per-trial invariant on replay: the child run is found by its
``harness.trial_id`` tag under the parent, exactly as a live start finds it; only a ``start`` creates a run, and only
when none exists. Every operation is idempotent, so replaying one that had reached the store before the driver lost
track of it changes nothing: params already logged are skipped (MLflow params are immutable), metrics keep the
timestamp they were first submitted with (MLflow drops an identical (key, timestamp, step, value) point), tags and
artifacts overwrite themselves, an image already logged at its step is not logged again, and a ``start`` carries an
attempt token so a replayed start does not count an attempt twice.

:class:`Outbox` (one per run directory and store, in the driver): a write is applied at once while the server
answers. When one fails and the server's ``/health`` does not answer (connection refused, timeout, a 5xx from a proxy),
that write and every later one (order matters: a run's end must not overtake its metrics) are queued, in memory and
appended to ``<run dir>/tracking-pending-<parent run id>.jsonl``, flushed to the OS per write: a driver crash loses
nothing (an OS crash may lose the last lines). The queue is retried on later writes after an exponential backoff (1 s
doubling to 30 s) and, at the end of the run, for up to ``HARNESS_TRACKING_WAIT_S`` seconds (default 60). What is
still unwritten then is reported with the command that writes it (``harness sync-tracking RUN_DIR``); the next
``harness run`` with the same ``--run-dir`` writes it first, too. A write the server *rejects* while answering its
health check is a real error, not an outage: it is not queued, and the trial's tracker logs a warning and stops, as
before.

MLflow's own HTTP client retries a failed request for about four minutes (7 retries, backoff factor 2) and would
hold the driver, and every trial waiting on it, that long. Writes made here shorten that to two quick retries (a
blip) unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` are set: the outbox does the long
waiting, without blocking anyone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.files import DamagedFile, write_text
from harness.tracking.params import NOT_APPLICABLE, mlflow_key
from harness.tracking.uri import check_tracking_server, client_for

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from harness.tracking.runs import TrackingContext

log = logging.getLogger(__name__)

PENDING_PREFIX = "tracking-pending-"
ATTEMPT_TOKEN_TAG = "harness.attempt_token"
_HEADER_KEY = "harness_tracking_pending"
_FORMAT = 1

FIRST_RETRY_S = 1.0
MAX_RETRY_S = 30.0
PROBE_TIMEOUT_S = 3.0
# MLflow's own retries while the outbox writes (unless the user set them): a blip is retried, an outage is queued
_MLFLOW_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def final_wait_s() -> float:
    """How long the end of a run waits for an unreachable server before reporting what is unwritten."""
    return float(os.environ.get("HARNESS_TRACKING_WAIT_S", "60"))


class TrackingRejected(Exception):
    """The store answered and refused an operation (not an outage): the message names the trial and the write."""


@contextlib.contextmanager
def bounded_mlflow_retries() -> Iterator[None]:
    """MLflow's HTTP retries shortened for the block, where the user did not choose them (see the module doc)."""
    added = {k: v for k, v in _MLFLOW_RETRY_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def server_answers(uri: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the store at ``uri`` answers (a server's ``/health``; local stores always do)."""
    try:
        check_tracking_server(uri, timeout=timeout)
    except ConnectionError:
        return False
    return True


# ------------------------------------------------------------------------------------------------ operations


class Applier:
    """Performs operations against one store and parent run. Caches each trial's child run id and logged params, so
    a live trial costs no extra lookups; a replay in a new process finds them again by the trial's tag."""

    def __init__(self, context: TrackingContext, base: Path | None = None) -> None:
        self.context = context
        self.base = base  # relative artifact paths in operations are under this folder (the run directory)
        self._client: MlflowClient | None = None
        self.run_ids: dict[str, str] = {}
        self._params: dict[str, dict[str, str]] = {}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = client_for(self.context.tracking_uri)
        return self._client

    def apply(self, op: dict[str, Any]) -> None:
        with bounded_mlflow_retries():
            getattr(self, f"_op_{op['op']}")(op)

    def _path(self, op: dict[str, Any]) -> Path:
        path = Path(op["path"])
        return path if path.is_absolute() or self.base is None else self.base / path

    def _run_id(self, trial_id: str) -> str:
        if trial_id not in self.run_ids:
            from harness.tracking.runs import child_runs

            runs = child_runs(self.client, self.context, trial_id)
            if not runs:
                raise TrackingRejected(f"trial {trial_id} has no child run under parent {self.context.parent_run_id}")
            self.run_ids[trial_id] = runs[0].info.run_id
        return self.run_ids[trial_id]

    def _existing_params(self, run_id: str) -> dict[str, str]:
        if run_id not in self._params:
            self._params[run_id] = dict(self.client.get_run(run_id).data.params)
        return self._params[run_id]

    def _op_start(self, op: dict[str, Any]) -> None:
        """Find the trial's child run under the parent or create it; a new attempt is counted once per token."""
        from harness.tracking.runs import STATUS_TAG, _log_tags, child_runs

        client, trial_id = self.client, op["trial"]
        existing = child_runs(client, self.context, trial_id)
        if existing:
            run = existing[0]
            if len(existing) > 1:
                log.warning("trial %s has %d child runs; logging into the first", op["name"], len(existing))
            run_id = run.info.run_id
            self._params[run_id] = dict(run.data.params)
            tags = {STATUS_TAG: "running", ATTEMPT_TOKEN_TAG: op["attempt"]}
            if run.data.tags.get(ATTEMPT_TOKEN_TAG) != op["attempt"]:  # else: a replay of a start that got through
                tags["harness.attempts"] = str(int(run.data.tags.get("harness.attempts", "1")) + 1)
            client.update_run(run_id, status="RUNNING")
            _log_tags(client, run_id, tags)
        else:
            run = client.create_run(self.context.experiment_id, run_name=op["name"],
                                    tags={**op["tags"], "harness.attempts": "1", ATTEMPT_TOKEN_TAG: op["attempt"]})
            run_id = run.info.run_id
            self._params[run_id] = {}
        self.run_ids[trial_id] = run_id
        self._op_params({"trial": trial_id, "params": op["params"], "name": op["name"]})

    def _op_params(self, op: dict[str, Any]) -> None:
        from harness.tracking.runs import _log_params

        run_id = self._run_id(op["trial"])
        conflicts = _log_params(self.client, run_id, op["params"], self._existing_params(run_id))
        if conflicts:
            log.warning("trial %s: params %s already logged with other values; kept the earlier ones",
                        op.get("name", op["trial"]), conflicts)

    def _op_fill_params(self, op: dict[str, Any]) -> None:
        """Identical param keys in every trial: the expected keys this trial never logged, as not applicable."""
        run_id = self._run_id(op["trial"])
        existing = self._existing_params(run_id)
        missing = {k: NOT_APPLICABLE for k in op["keys"] if mlflow_key(k) not in existing and k not in existing}
        if missing:
            self._op_params({"trial": op["trial"], "params": missing})

    def _op_metrics(self, op: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        from harness.tracking.runs import _log_metrics

        metrics = [Metric(key, float(value), int(stamp), int(step)) for key, value, stamp, step in op["metrics"]]
        _log_metrics(self.client, self._run_id(op["trial"]), metrics)

    def _op_tags(self, op: dict[str, Any]) -> None:
        from harness.tracking.runs import _log_tags

        _log_tags(self.client, self._run_id(op["trial"]), op["tags"])

    def _op_image(self, op: dict[str, Any]) -> None:
        """A stepped image, once per key and step (a replay finds it logged)."""
        from PIL import Image

        run_id = self._run_id(op["trial"])
        prefix = f"{op['key']}+step+{op['step']}+"
        if any(Path(a.path).name.startswith(prefix) and a.path.endswith(".png")
               for a in self.client.list_artifacts(run_id, "images")):
            return
        with Image.open(self._path(op)) as image:
            self.client.log_image(run_id, image.convert("RGB"), key=op["key"], step=op["step"], synchronous=True)

    def _op_artifact(self, op: dict[str, Any]) -> None:
        self.client.log_artifact(self._run_id(op["trial"]), str(self._path(op)), op.get("folder"))

    def _op_terminate(self, op: dict[str, Any]) -> None:
        self.client.set_terminated(self._run_id(op["trial"]), op["status"])

    def _op_parent_finish(self, op: dict[str, Any]) -> None:
        """End the parent run, tagged with its trials' outcome as the store knows it when this is written."""
        from harness.tracking.runs import STATUS_TAG, _log_tags, child_runs

        client = self.client
        try:
            counts = {"ok": 0, "failed": 0, "running": 0}
            for run in child_runs(client, self.context):
                state = run.data.tags.get(STATUS_TAG, "running")
                counts[state if state in counts else "running"] += 1
            _log_tags(client, self.context.parent_run_id, {f"harness.trials_{k}": str(v) for k, v in counts.items()})
        finally:
            client.set_terminated(self.context.parent_run_id, op["status"])


def describe(op: dict[str, Any]) -> str:
    """An operation in words, for warnings: which write of which trial."""
    what = {"start": "its child run", "params": "params", "fill_params": "params", "metrics": "metrics",
            "tags": "tags", "image": "its sample image", "artifact": f"artifact {Path(op.get('path', '')).name}",
            "terminate": "the end of its run"}.get(op["op"])
    if op["op"] == "parent_finish":
        return "the end of the parent run"
    return f"{what} of trial {op.get('name') or op.get('trial')}"


# ------------------------------------------------------------------------------------------------ the outbox


class Outbox:
    """The driver's queue of tracking writes for one run directory and store (see the module doc)."""

    def __init__(self, context: TrackingContext, path: Path) -> None:
        self.context, self.path = context, Path(path)
        self.applier = Applier(context, self.path.parent)
        self.pending: list[dict[str, Any]] = []
        self.delay = FIRST_RETRY_S
        self.next_try = 0.0
        self.outage_since: float | None = None
        self.last_error = ""
        self.written_late = 0  # queued writes that reached the store later (tests and the end-of-run line)
        self.dropped = 0  # queued writes the store refused when they were replayed

    # -- writing
    def submit(self, op: dict[str, Any]) -> None:
        """Apply ``op`` now, or queue it behind earlier unwritten ones; :class:`TrackingRejected` (or the store's own
        error) if the store answers and refuses it."""
        if self.pending:
            self._drain_if_due()
        if not self.pending:
            try:
                self.applier.apply(op)
                return
            except TrackingRejected:
                raise
            except Exception as exc:  # noqa: BLE001 - classified by asking the server, not by the error's type
                if server_answers(self.context.tracking_uri):
                    raise
                self._outage(exc)
        self._queue(op)

    def _outage(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
        if self.outage_since is None:
            self.outage_since = time.monotonic()
            log.warning("MLflow tracking server %s unreachable (%s): tracking writes are kept in %s and written when "
                        "it answers again; trials go on", self.context.tracking_uri, self.last_error, self.path)
        self.next_try = time.monotonic() + self.delay
        self.delay = min(self.delay * 2, MAX_RETRY_S)

    def _queue(self, op: dict[str, Any]) -> None:
        new_file = not self.path.exists()
        self.pending.append(op)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            if new_file:
                out.write(json.dumps(self._header()) + "\n")
            out.write(json.dumps(op) + "\n")
            out.flush()

    def _header(self) -> dict[str, Any]:
        return {_HEADER_KEY: _FORMAT, "tracking_uri": self.context.tracking_uri,
                "experiment_id": self.context.experiment_id, "parent_run_id": self.context.parent_run_id}

    def _rewrite(self) -> None:
        """The spool file holds exactly the unwritten operations (none: no file)."""
        if not self.pending:
            self.path.unlink(missing_ok=True)
            return
        write_text(self.path, "".join(json.dumps(line) + "\n" for line in [self._header(), *self.pending]))

    # -- replaying
    def _drain_if_due(self) -> None:
        if time.monotonic() >= self.next_try:
            self.drain()

    def drain(self, *, skip_parent_finish: bool = False) -> int:
        """Write the queued operations in order while the store answers; returns how many are still unwritten.
        ``skip_parent_finish``: drop a queued end of the parent run (a new invocation reopened it)."""
        if not self.pending:
            return 0
        if not server_answers(self.context.tracking_uri):
            self._outage(ConnectionError(f"{self.context.tracking_uri} does not answer on /health"))
            return len(self.pending)
        done = 0
        refused: set[str] = set()
        try:
            for op in self.pending:
                if skip_parent_finish and op["op"] == "parent_finish":
                    done += 1
                    continue
                if op.get("trial") in refused:
                    done, self.dropped = done + 1, self.dropped + 1
                    continue
                try:
                    self.applier.apply(op)
                except Exception as exc:  # noqa: BLE001
                    if not server_answers(self.context.tracking_uri):
                        self._outage(exc)
                        break
                    self.dropped += 1
                    if op.get("trial"):
                        refused.add(op["trial"])  # as a live tracker would: no more writes for that trial
                    log.warning("MLflow at %s refused %s while replaying it (%s: %s); it is dropped, and so are "
                                "that trial's later writes", self.context.tracking_uri, describe(op),
                                type(exc).__name__, str(exc)[:300])
                else:
                    self.written_late += 1
                done += 1
        finally:
            self.pending = self.pending[done:]
            self._rewrite()
        if not self.pending and self.outage_since is not None:
            log.warning("MLflow tracking server %s answers again: %d kept tracking writes written",
                        self.context.tracking_uri, self.written_late)
            self.outage_since, self.delay, self.next_try = None, FIRST_RETRY_S, 0.0
        return len(self.pending)

    def close(self, wait_s: float | None = None, *, skip_parent_finish: bool = False) -> int:
        """At the end of a run: keep retrying for up to ``wait_s`` (default :func:`final_wait_s`); returns how many
        writes are still unwritten (kept in the spool file for :func:`replay_pending`)."""
        deadline = time.monotonic() + (final_wait_s() if wait_s is None else wait_s)
        while self.drain(skip_parent_finish=skip_parent_finish) and time.monotonic() < deadline:
            time.sleep(max(0.0, min(self.next_try, deadline) - time.monotonic()))
        return len(self.pending)

    def unwritten_message(self, run_dir: Path) -> str:
        trials = {op["trial"] for op in self.pending if op.get("trial")}
        return (f"{len(self.pending)} MLflow tracking writes ({len(trials)} trials"
                f"{', the end of the parent run' if any(op['op'] == 'parent_finish' for op in self.pending) else ''})"
                f" could not reach {self.context.tracking_uri} ({self.last_error or 'no answer'}); they are kept in "
                f"{self.path}. Write them once the server is back: `harness sync-tracking {run_dir}` (the next "
                f"`harness run` with --run-dir {run_dir} writes them first, too). The results are complete on disk.")


_OUTBOXES: dict[str, Outbox] = {}


def spool_path(run_dir: str | Path, parent_run_id: str) -> Path:
    """``<run dir>/tracking-pending-<parent run id>.jsonl``: one file per parent run (= per store), so writes meant
    for one store are never replayed into another."""
    return Path(run_dir) / f"{PENDING_PREFIX}{parent_run_id}.jsonl"


def outbox_for(context: TrackingContext) -> Outbox | None:
    """The driver's outbox of ``context`` (one per spool file in this process; it starts with what the file already
    holds), or None for a context without a run directory (its writes are live only)."""
    if not getattr(context, "run_dir", None):
        return None
    path = spool_path(Path(context.run_dir).resolve(), context.parent_run_id)
    box = _OUTBOXES.get(str(path))
    if box is None:
        box = _OUTBOXES[str(path)] = Outbox(context, path)
        box.pending = read_spool(path)[1]
    return box


def read_spool(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """A spool file's header and operations; ``(None, [])`` when there is none. A torn last line (a crash while it
    was written) is skipped; damage elsewhere is an error naming the file."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return None, []
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break
            raise DamagedFile(path, f"line {number} is not JSON", "delete it to give up the tracking writes it "
                              "keeps; the results on disk are unaffected") from None
    if not records or not isinstance(records[0], dict) or _HEADER_KEY not in records[0]:
        raise DamagedFile(path, "is not a harness tracking spool (no header line)", "delete it if it is not needed")
    return records[0], records[1:]


def kept_contexts(run_dir: Path) -> list[TrackingContext]:
    """The stores and parent runs a run directory keeps unwritten tracking writes for (named in the spool files)."""
    from harness.tracking.runs import TrackingContext

    run_dir = Path(run_dir).resolve()
    contexts = []
    for path in sorted(run_dir.glob(f"{PENDING_PREFIX}*.jsonl")):
        header, _ = read_spool(path)
        if header is not None:
            contexts.append(TrackingContext(header["tracking_uri"], str(header["experiment_id"]),
                                            str(header["parent_run_id"]), run_dir=str(run_dir)))
    return contexts


def replay_pending(run_dir: Path, *, wait_s: float = 0.0, skip_parent_finish_of: str | None = None
                   ) -> list[tuple[TrackingContext, int, int]]:
    """Write a run directory's kept tracking writes into the stores they were meant for, trying each for up to
    ``wait_s`` seconds. ``skip_parent_finish_of``: a parent run a new invocation reopened (it ends it itself).
    Returns ``(context, written, still unwritten)`` per store; an empty list when nothing is kept."""
    report = []
    for context in kept_contexts(run_dir):
        box = outbox_for(context)
        assert box is not None
        written = box.written_late
        skip = context.parent_run_id == skip_parent_finish_of
        left = box.drain(skip_parent_finish=skip) if wait_s <= 0 else box.close(wait_s, skip_parent_finish=skip)
        report.append((context, box.written_late - written, left))
    return report
