"""Ray Tune executor (the default): each TrialSpec is one Tune trial.

* No address: ``ray.init()`` starts a local Ray on this machine (the embedded default); ``address`` joins a cluster.
* Data are loaded once by the driver and handed to trials through ``tune.with_parameters`` (one object-store copy).
* Resources per trial come from the suite (``cpu``, fractional ``gpu``); ``run_trial`` sets torch threads = CPUs.
* Checkpoints: a method's ``state_dict`` goes through ``tune.report(..., checkpoint=...)`` every
  ``budget.checkpoint_every`` steps; a restarted trial (``FailureConfig(max_failures)``) continues from it.
* Resume: the experiment lives in ``<run dir>/ray/``; re-running the same command restores it with
  ``Tuner.restore(resume_unfinished=True, resume_errored=True)`` — finished trials are kept, not run again.
* Shared storage (``storage``, :mod:`harness.storage`; multi-node clusters): Tune keeps the experiment there
  instead, each trial uploads its trial directory there when it ends (from whichever node ran it), and the driver
  fetches the trial directories into its run directory when the experiment ends (in ``_fit``: runs and sweeps).
* A diverging trial (non-finite loss) is reported as ``failed`` with its reason and is not retried; other errors are
  retried up to ``max_failures`` times, then the trial errors and the suite goes on. Tune itself errors a trial with
  retries left when its node dies while the trial is being started on a reused actor (it sees that death twice):
  the experiment is then restored and run again, up to ``max_failures`` rounds, so such trials run (trials that
  errored past their retries get one more try in such a round).
* Intermediate evaluations (a sweep with ASHA, ``evaluate_every``): the metrics are reported with ``step`` (steps
  done, the scheduler's time attribute); a trial the scheduler stops ends as ``stopped`` (``TrialStopped``).

Tune classes come from ``ray.tune`` only (Ray 2.60: ``ray.train.RunConfig`` breaks a Tuner).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from harness.api import TrialDiverged
from harness.callbacks import TrialCallback, TrialInfo, TrialStopped, call_all
from harness.data import Dataset
from harness.executors.base import Executor
from harness.executors.common import dataset_key, prepare
from harness.files import DamagedFile, save_tensors
from harness.results import RESULT_FILE, TrialResult, trial_dir_for
from harness.suite import TrialSpec
from harness.trial import IntermediateEvaluation, load_checkpoint, run_trial

if TYPE_CHECKING:
    from harness.console import RunProgress
    from harness.storage import RunStorage
    from harness.tracking import TrackingContext

log = logging.getLogger(__name__)

EXPERIMENT = "tune"
STATE_FILE = "state.pt"
EVENTS_KEY = "harness_events"  # a trial's hook calls (JSON), for the driver's tracking and progress


def _flat_metrics(result: TrialResult) -> dict[str, float]:
    return {k: v.value for k, v in result.metrics.items()}


def _spec_of(config: dict[str, Any]) -> TrialSpec:
    """The trial's spec; a sweep's sampled values (every key besides ``spec``) override the method's params."""
    spec = TrialSpec.model_validate(config["spec"])
    sampled = {k: v for k, v in config.items() if k != "spec"}
    return spec.model_copy(update={"params": {**spec.params, **sampled}}) if sampled else spec


def _previous_result(trial_dir: Path, storage: RunStorage | None) -> TrialResult | None:
    """The result a finished earlier invocation left (in shared storage if given: this node may never have seen it)."""
    if storage is not None:
        text = storage.read_text(f"trials/{trial_dir.name}/{RESULT_FILE}")
        return TrialResult.parse(text, f"{storage.root}/trials/{trial_dir.name}/{RESULT_FILE}") if text else None
    path = trial_dir / RESULT_FILE
    return TrialResult.load(path) if path.exists() else None


def _report(metrics: dict[str, Any], checkpoint=None) -> None:
    """``tune.report``; Tune stops a trial (a scheduler's decision, the experiment ending) by raising ``SystemExit``
    in the trial's next report: that becomes :class:`TrialStopped`, so ``run_trial`` records the trial as stopped."""
    from ray import tune

    try:
        tune.report(metrics, checkpoint=checkpoint)
    except SystemExit:
        raise TrialStopped(f"stopped by the Tune scheduler after step {metrics.get('step')}") from None


class TuneReporter(TrialCallback):
    """The worker's side of a Tune trial: reports to Tune what the driver needs.

    * checkpoints (``on_checkpoint``), so a retried trial resumes from its last state;
    * intermediate evaluations at ``step`` (the scheduler's time attribute), so ASHA can stop the trial;
    * the trial's own hook calls (``on_start``, ``on_log``, ``on_evaluation``) as JSON events under
      :data:`EVENTS_KEY`, replayed by the driver's :class:`DriverCallback` onto tracking and progress. Loss records are
      sent with the next report, or at least every ``flush_seconds``: a report is a round trip to the driver.
    """

    def __init__(self, spec: TrialSpec, node_id: str, flush_seconds: float = 15.0) -> None:
        self.fields = {"harness_trial": spec.trial_id, "node_id": node_id}
        self.flush_seconds = flush_seconds
        self.events: list[dict[str, Any]] = []
        self._last_report = time.monotonic()

    def take_events(self) -> str:
        events, self.events = self.events, []
        self._last_report = time.monotonic()
        return json.dumps(events, default=str)

    def report(self, step: int, values: dict[str, float] | None = None, checkpoint=None) -> None:
        _report({"status": "running", **self.fields, "step": step, **(values or {}), EVENTS_KEY: self.take_events()},
                checkpoint=checkpoint)

    def on_start(self, trial: TrialInfo) -> None:
        self.events.append({"hook": "on_start", "provenance": trial.provenance})
        self.report(0)

    def on_log(self, trial: TrialInfo, step: int, losses: dict[str, float], info: dict[str, Any]) -> None:
        self.events.append({"hook": "on_log", "step": step, "losses": losses, "info": info})
        if time.monotonic() - self._last_report > self.flush_seconds:
            self.report(step)

    def on_evaluation(self, trial: TrialInfo, steps_done: int, values: dict[str, float]) -> None:
        self.events.append({"hook": "on_evaluation", "step": steps_done, "values": values})
        self.report(steps_done, values)

    def on_checkpoint(self, trial: TrialInfo, state: dict[str, Any]) -> None:
        from ray import tune

        with tempfile.TemporaryDirectory() as directory:
            save_tensors(Path(directory) / STATE_FILE, state)
            step = state["losses"][-1]["step"] if state.get("losses") else -1
            self.report(step, checkpoint=tune.Checkpoint.from_directory(directory))


def tune_trainable(config: dict[str, Any], datasets: dict[str, Dataset], run_dir: str, device: str,
                   storage: RunStorage | None = None, evaluate_metrics: tuple[str, ...] = (),
                   evaluate_every: int = 0, quiet: bool = True) -> None:
    """The Tune function trainable: one TrialSpec → ``run_trial`` with a :class:`TuneReporter` (and, with
    ``evaluate_every``, intermediate evaluations of ``evaluate_metrics`` reported to Tune's scheduler). ``quiet``:
    no INFO line per checkpoint from Ray in the driver's console."""
    import ray
    from ray import tune

    if quiet:
        logging.getLogger("ray.train").setLevel(logging.WARNING)
    spec = _spec_of(config)
    node_id = ray.get_runtime_context().get_node_id()
    placement = {"ray_node_id": node_id, "ray_trial_id": tune.get_context().get_trial_id()}
    trial_dir = trial_dir_for(Path(run_dir), spec)
    previous = _previous_result(trial_dir, storage)
    if previous is not None:  # finished in an earlier invocation (or by another executor): keep it, do not recompute
        if previous.status == "ok" and previous.trial_id == spec.trial_id:
            tune.report({"status": "ok", "harness_trial": spec.trial_id, "reused": 1, "node_id": node_id,
                         "step": spec.budget.steps, **_flat_metrics(previous)})
            return

    restore = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            restore = load_checkpoint(Path(directory) / STATE_FILE)  # no code from the file; damaged: step 0

    reporter = TuneReporter(spec, node_id)
    callbacks: list[TrialCallback] = [reporter]
    if evaluate_every:
        callbacks.insert(0, IntermediateEvaluation(evaluate_metrics, evaluate_every))
    try:
        result = run_trial(spec, run_dir, dataset=datasets[dataset_key(spec)], device=device, restore=restore,
                           callbacks=callbacks, provenance=placement)
        final = {"status": result.status, "harness_trial": spec.trial_id, "node_id": node_id,
                 "step": spec.budget.steps, **_flat_metrics(result)}
    except TrialDiverged as exc:  # retrying a diverged trial from its last checkpoint would diverge again
        final = {"status": "failed", "harness_trial": spec.trial_id, "error": str(exc), "node_id": node_id}
    if storage is not None:  # before the final report: once Tune sees it, the driver may fetch the trial
        storage.upload(trial_dir, f"trials/{trial_dir.name}")
    if final["status"] == "stopped":  # its session takes no more reports: end the thread the way Tune's stop does
        raise SystemExit(0)
    tune.report({**final, EVENTS_KEY: reporter.take_events()})


class DriverCallback(Callback):
    """The driver's side of every Tune trial: replays the events a trial's :class:`TuneReporter` sent onto the
    trial's :class:`~harness.tracking.TrackingCallback` (MLflow is written here, never by workers) and the progress
    display, and finishes both from the trial's ``result.json`` when it ends (fetched from shared storage first, when
    trials ran on other nodes). A trial Tune stopped (ASHA) writes its result after Tune reports it complete: it is
    finished by :meth:`finish_pending` once Tune returns."""

    def __init__(self, run_dir: Path, *, tracking: TrackingContext | None, progress: RunProgress | None,
                 storage: RunStorage | None) -> None:
        self.run_dir, self.tracking, self.progress, self.storage = Path(run_dir), tracking, progress, storage
        self._trials: dict[str, tuple[TrialInfo, list[TrialCallback]]] = {}
        self._pending: dict[str, tuple[Any, str]] = {}  # Tune trial id -> (trial, why it ended without a result yet)
        self.errored_with_retries: dict[str, tuple[Any, str]] = {}  # see on_trial_error

    def _trial(self, trial) -> tuple[TrialInfo, list[TrialCallback]]:
        if trial.trial_id not in self._trials:
            spec = _spec_of(trial.config)
            callbacks: list[TrialCallback] = []
            if self.tracking is not None:
                from harness.tracking import TrackingCallback

                callbacks.append(TrackingCallback(self.tracking))
            self._trials[trial.trial_id] = (TrialInfo(spec, trial_dir_for(self.run_dir, spec)), callbacks)
        return self._trials[trial.trial_id]

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        events = result.get(EVENTS_KEY)
        if not events:
            return
        state, callbacks = self._trial(trial)
        for event in json.loads(events):
            hook = event["hook"]
            if hook == "on_start":
                state.provenance = event["provenance"]
                if self.progress is not None:
                    self.progress.started(state.spec.name)
                call_all(callbacks, "on_start", state)
            elif hook == "on_log":
                call_all(callbacks, "on_log", state, event["step"], event["losses"], event["info"])
            elif hook == "on_evaluation":
                call_all(callbacks, "on_evaluation", state, event["step"], event["values"])

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        # "reused": run_trial had finished when this attempt began. Finished in an earlier invocation: tracked then.
        # But a trial that started in this invocation (its events reached us) and whose node died after it wrote its
        # result, before its final report, ends here too: its tracking and progress are finished now, once
        if (trial.last_result or {}).get("reused") and trial.trial_id not in self._trials:
            return
        self._finish(trial, "ended without a result")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        error = trial.get_error()
        why = f"{type(error).__name__}: {error}" if error is not None else "errored"
        if trial.should_recover():
            # Tune errors a trial only past its retries, except when a failure reaches it while it is PENDING (Ray
            # 2.60 TuneController._process_trial_failure): a node that dies while a reused actor is being reset for
            # the trial fails both calls in flight, the first puts the trial back to PENDING for a retry and the
            # second errors it. It had retries left: _fit resumes it instead of leaving it unfinished
            self.errored_with_retries[trial.trial_id] = (trial, why)
            return
        self._finish(trial, why)

    def take_errored_with_retries(self) -> list[str]:
        """The names of the trials Tune errored although they had retries left (forgotten here: _fit resumes them)."""
        names = [self._trial(trial)[0].spec.name for trial, _ in self.errored_with_retries.values()]
        self.errored_with_retries.clear()
        return names

    def give_up_errored_with_retries(self) -> None:
        """No more resuming: such trials end as any errored trial does."""
        for trial, why in list(self.errored_with_retries.values()):
            self._finish(trial, why)
        self.errored_with_retries.clear()

    def _finish(self, trial, why: str) -> None:
        state, callbacks = self._trial(trial)
        if self.storage is not None:
            self.storage.download(f"trials/{state.trial_dir.name}", state.trial_dir)
        path = state.trial_dir / RESULT_FILE
        try:
            result = TrialResult.load(path) if path.exists() else None
        except DamagedFile as exc:  # not this run's doing (it writes atomically): say so, count it as unfinished
            log.error("%s", exc)
            result = None
        if result is None or result.status == "running":
            self._pending[trial.trial_id] = (trial, why)
            return
        self._pending.pop(trial.trial_id, None)
        call_all(callbacks, "on_finish", state, result)
        if self.progress is not None:
            self.progress.finished(result)

    def __reduce__(self):
        # Tune pickles its callbacks into the experiment state (tuner.pkl); what a restored experiment must call is
        # this invocation's callback (its console, its store), not a copy of the one that started the run
        return _active_driver_callback, ()

    def finish_pending(self, wait_s: float = 30.0) -> None:
        """After Tune returned: trials whose result arrived after Tune reported them ended (a stopped trial writes
        it as its worker unwinds: waited for up to ``wait_s``), or never."""
        deadline = time.monotonic() + wait_s
        while self._pending and time.monotonic() < deadline:
            for trial, why in list(self._pending.values()):
                self._finish(trial, why)
            if self._pending:
                time.sleep(0.5)
        for trial, why in list(self._pending.values()):
            del self._pending[trial.trial_id]
            if self.progress is not None:
                self.progress.lost(self._trial(trial)[0].spec.name, why)


_ACTIVE_DRIVER: list[Callback] = []


def _active_driver_callback() -> Callback:
    return _ACTIVE_DRIVER[-1] if _ACTIVE_DRIVER else Callback()


def _trial_name(trial) -> str:
    spec = trial.config["spec"]
    return f"{spec['label']}-{spec['shots']}shot-seed{spec['seed']}"


def _trial_dirname(trial) -> str:
    return f"{_trial_name(trial)}-{trial.trial_id}"


@dataclass(frozen=True)
class RayConnection:
    started: bool  # this process started the local Ray and must shut it down
    address: str
    dashboard_url: str | None


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an address nothing listens on (``ray.init`` would retry for minutes)."""
    if address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"cannot reach a Ray cluster at {address!r}: expected HOST:PORT (or ray://HOST:PORT)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach a Ray cluster at {address!r}: {exc.strerror or exc}") from None


@contextmanager
def quiet_tune(verbose: bool) -> Iterator[None]:
    """Tune's own console output off unless ``verbose``: its experiment box and trial tables (Ray's new output engine
    prints them even at ``verbose=0``; the legacy reporter honours it), its INFO lines, and the snapshot-frequency
    warning. The harness's progress display shows the trials instead."""
    if verbose:
        yield
        return
    env = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    saved_env = {k: os.environ.get(k) for k in env}
    loggers = [logging.getLogger(name) for name in ("ray.tune", "ray.train")]
    saved_levels = [logger.level for logger in loggers]
    os.environ.update(env)
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for logger, level in zip(loggers, saved_levels):
            logger.setLevel(level)


def init_ray(address: str | None = None, num_cpus: int | None = None, *, quiet: bool = False,
             **kwargs: Any) -> RayConnection:
    """Connect to ``address`` or start a local Ray (the embedded default); ``quiet``: no INFO lines from Ray."""
    import ray

    if quiet:
        kwargs.setdefault("logging_level", logging.WARNING)
    if ray.is_initialized():
        return RayConnection(False, ray.get_runtime_context().gcs_address, None)
    if address:
        check_reachable(address)
    try:
        context = ray.init(address=address, **kwargs) if address else ray.init(num_cpus=num_cpus, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        if not address:
            raise
        raise ConnectionError(f"cannot reach a Ray cluster at {address!r}: {exc}") from exc
    dashboard = getattr(context, "dashboard_url", None) or None
    return RayConnection(True, ray.get_runtime_context().gcs_address,
                         f"http://{dashboard}" if dashboard and "://" not in dashboard else dashboard)


def _fit(
    specs: list[TrialSpec],
    run_dir: Path,
    experiment_name: str,
    param_space: dict[str, Any],
    *,
    address: str | None,
    num_cpus: int | None,
    device: str,
    max_failures: int,
    verbose: int,
    tracking: TrackingContext | None,
    tune_config: dict[str, Any],
    storage: RunStorage | None = None,
    intermediate: tuple[tuple[str, ...], int] | None = None,
    progress: RunProgress | None = None,
):
    """Build (or restore) and run one Tune experiment under ``run_dir/ray/<experiment_name>`` (or in ``storage``);
    ``intermediate`` = (metrics, every steps) evaluated during training, for a scheduler. ``verbose`` is Tune's own
    console output (0: none; our ``progress`` shows the trials)."""
    from ray import tune

    resources = specs[0].resources
    if any(s.resources != resources for s in specs):
        raise ValueError("all trials of one Tune run must request the same resources")
    started = init_ray(address, num_cpus=num_cpus, quiet=not verbose).started
    try:
        trainable = tune.with_resources(
            tune.with_parameters(tune_trainable, datasets=prepare(specs, device), run_dir=str(run_dir),
                                 device=device, storage=storage, quiet=not verbose,
                                 evaluate_metrics=intermediate[0] if intermediate else (),
                                 evaluate_every=intermediate[1] if intermediate else 0),
            {"cpu": resources.cpu, "gpu": resources.gpu},
        )
        driver = DriverCallback(run_dir, tracking=tracking, progress=progress, storage=storage)
        _ACTIVE_DRIVER.append(driver)
        storage_path = storage.tune_path() if storage is not None else str(run_dir / "ray")
        experiment = f"{storage_path}/{experiment_name}"
        if tune.Tuner.can_restore(experiment):
            log.warning("restoring the interrupted Tune experiment in %s", experiment)
            # param_space again: tuner.pkl does not keep it, and where the stored snapshot lacks the search
            # generator's state (a driver killed while Tune was syncing it to storage) Tune would create new trials
            # from an empty config
            tuner = tune.Tuner.restore(experiment, trainable=trainable, param_space=param_space,
                                       resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(
                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname,
                    # a trial's worker process serves the next trial: no process start, imports and data fetch
                    # per trial (3-4 s each, measured by benchmarks/bench_executor.py); run_trial seeds and sets
                    # threads per trial, so results do not depend on which process ran a trial before
                    reuse_actors=True, **tune_config
                ),
                run_config=tune.RunConfig(
                    name=experiment_name,
                    storage_path=storage_path,
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    callbacks=[driver],
                    verbose=verbose,
                ),
            )
        with quiet_tune(bool(verbose)):
            grid = tuner.fit()
            for _ in range(max_failures):  # each round is at most one more try of a trial
                resumed = driver.take_errored_with_retries()
                if not resumed:
                    break
                log.warning("Tune errored %d trials that had retries left (%s): their node died while they were being "
                            "started; resuming the experiment so that they run (from their checkpoints)",
                            len(resumed), ", ".join(sorted(resumed)))
                tuner = tune.Tuner.restore(experiment, trainable=trainable, param_space=param_space,
                                           resume_unfinished=True, resume_errored=True)
                grid = tuner.fit()
            driver.give_up_errored_with_retries()
        for result in grid:
            if result.error is not None:  # a trial that never reported has no config in its result: name its folder
                name = _spec_of(result.config).name if result.config else Path(result.path).name
                log.error("trial %s errored: %s", name, result.error)
        if storage is not None:  # the trials' outputs, from whichever nodes ran them
            storage.download("trials", run_dir / "trials")
        driver.finish_pending()
        return grid
    finally:
        if _ACTIVE_DRIVER:
            _ACTIVE_DRIVER.pop()
        if started:
            import ray

            ray.shutdown()


def _read_results(run_dir: Path, specs: list[TrialSpec]) -> list[TrialResult]:
    results = []
    for path in (trial_dir_for(run_dir, spec) / RESULT_FILE for spec in specs):
        try:
            if path.exists():
                results.append(TrialResult.load(path))
        except DamagedFile as exc:  # logged by the driver when its trial ended; counted as unfinished
            log.error("%s", exc)
    return results


def run_ray(
    specs: list[TrialSpec],
    run_dir: Path,
    *,
    address: str | None = None,
    device: str = "auto",
    max_failures: int = 1,
    max_concurrent: int | None = None,
    num_cpus: int | None = None,
    verbose: int = 0,
    tracking: TrackingContext | None = None,
    storage: RunStorage | None = None,
    progress: RunProgress | None = None,
) -> list[TrialResult]:
    """Run ``specs`` as Tune trials; returns the results read back from the run directory (fetched from
    ``storage`` first when trials ran on other nodes)."""
    from ray import tune

    if not specs:
        return []
    run_dir = Path(run_dir).resolve()
    _fit(specs, run_dir, EXPERIMENT, {"spec": tune.grid_search([s.model_dump(mode="json") for s in specs])},
         address=address, num_cpus=num_cpus, device=device, max_failures=max_failures, verbose=verbose,
         tracking=tracking, tune_config={"max_concurrent_trials": max_concurrent}, storage=storage, progress=progress)
    return _read_results(run_dir, specs)


class RayExecutor(Executor):
    """Ray Tune: a local Ray by default (the embedded default), ``address`` to join a running cluster; shared
    ``storage`` when trials run on other machines."""

    name = "ray"
    description = "Ray Tune: a local Ray, or a cluster with --address / --cluster"
    supports_storage = True

    def connect(self) -> str | None:
        self.connection = init_ray(self.address, quiet=not self.verbose)
        return (f"Ray: {self.address or 'local'} ({self.connection.address}); dashboard: "
                f"{self.connection.dashboard_url or 'not installed (pip install ray[default])'}")

    def close(self) -> None:
        connection = getattr(self, "connection", None)
        if connection is not None and connection.started:
            import ray

            ray.shutdown()

    def run(self, specs, run_dir, *, device, tracking, progress):
        return run_ray(specs, run_dir, address=self.address, device=device, max_failures=self.max_failures,
                       verbose=2 if self.verbose else 0, tracking=tracking, storage=self.storage, progress=progress)
