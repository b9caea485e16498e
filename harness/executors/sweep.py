"""Hyper-parameter sweeps: Optuna (TPE) through Ray Tune over a suite's ``sweep.space``.

The space becomes Optuna distributions (picklable, so Tune can checkpoint the searcher — a lambda could not be); the
study persists in ``<run dir>/sweep/optuna.db`` (inspect it with Optuna's own tools, e.g. ``optuna-dashboard``) and,
with shared storage, is copied there after every finished trial; the best configuration is printed and written to
``<run dir>/sweep/best.json``. An interrupted sweep is restored with the searcher's history by re-running the same
command with the same ``--run-dir`` (with ``--storage``: the same run-directory name, on any machine).

One sweep sample = one trial of the sweep method at the suite's first shots setting and first seed, with the sampled
values overriding the method's params, on the suite's *validation* classes (:func:`harness.suite.selection_spec`: base
classes playing the novel role, scored on their own held-out training images), so the novel classes' test images,
which the final scores use, never inform the choice. ``sweep.select_on: test`` scores on those test images instead;
the outcome, every trial and the report say so.

With ``sweep.asha`` the trials evaluate the metric every ``eval_every`` steps and Tune's ``ASHAScheduler`` stops the
unpromising ones (time attribute ``step``). Stopped trials enter the study as *pruned* with their intermediate values
(Optuna's TPE ranks pruned trials below complete ones), and the best configuration is chosen among the trials that
ran the whole budget: ``get_best_result(scope="all")`` would also consider a stopped trial's intermediate value,
measured after a fraction of the budget the best configuration is meant for.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.search.optuna import OptunaSearch

from harness.executors.ray_tune import _fit, _spec_of
from harness.suite import ParamSpace, Suite, selection_spec

if TYPE_CHECKING:
    from harness.console import RunProgress
    from harness.storage import RunStorage
    from harness.tracking import TrackingContext

SWEEP_EXPERIMENT = "sweep"
# the packages whose classes the searcher's snapshot (save/restore) may build: its Optuna sampler and distributions,
# Ray's searcher base state (NumPy arrays and random states are allowed by harness.files itself)
_SEARCHER_MODULES = ("optuna", "ray.tune.search", "harness.executors.sweep")
_SEARCHER_FUNCTIONS = tuple(("optuna.samplers._tpe.sampler", f) for f in ("default_weights", "default_gamma",
                                                                             "hyperopt_default_gamma"))
log = logging.getLogger(__name__)


def optuna_space(space: dict[str, ParamSpace]) -> dict[str, Any]:
    """The suite's space as Optuna distributions."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, dim in space.items():
        if dim.int_ is not None:
            out[name] = IntDistribution(*dim.int_)
        elif dim.uniform is not None:
            out[name] = FloatDistribution(*dim.uniform)
        elif dim.loguniform is not None:
            out[name] = FloatDistribution(*dim.loguniform, log=True)
        else:
            out[name] = CategoricalDistribution(list(dim.choice))
    return out


@dataclass
class _Invocation:
    """Where this invocation keeps the study: its sqlite URL (in this run directory) and the shared storage to copy it
    to. Read by the searcher when Tune unpickles it on restore, so a sweep resumed elsewhere (another run-directory
    path, a new head node after the old one died) uses the study downloaded into *this* run directory rather than the
    path pickled when the sweep started."""

    study_url: str | None = None
    storage: RunStorage | None = None
    sweep_dir: Path | None = None


_INVOCATION = _Invocation()


def _persist_study() -> None:
    if _INVOCATION.storage is not None and _INVOCATION.sweep_dir is not None:
        _INVOCATION.storage.upload(_INVOCATION.sweep_dir, "sweep")


class FinalMetricOptunaSearch(OptunaSearch):
    """Ray's ``OptunaSearch`` for our trials, which report the final metric once, at the end (``status`` ok);
    intermediate reports carry checkpoints or, with a scheduler, intermediate values (``status`` running, at ``step``
    steps done).

    * Intermediate values go to Optuna as such, at their training step (Ray's uses the report count). A trial that ends
      on an intermediate result was stopped by the scheduler: pruned in the study, not complete with its intermediate
      value (Ray's default). A trial that ends ``failed`` (diverged) is a failed study trial, not a pruned one.
    * A driver killed after Optuna recorded a trial's value but before Tune's next experiment snapshot leaves a trial
      that Tune resumes although the study has it finished: its repeated result (the same number: trials are
      deterministic) is not reported again, which would raise ``UpdateFinishedTrialError``.
    * Pickled (Tune's experiment state) without its storage: the study's URL is the current invocation's
      (:class:`_Invocation`). With shared storage the study file is copied there after every new and every finished
      trial, so a searcher snapshot Tune synced to storage never names a study trial the stored study lacks.
    """

    def _finished_in_study(self, trial_id: str) -> bool:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return False
        return self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished()

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        _persist_study()
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if (self.metric in result and result.get("status") == "running" and trial_id in self._ot_trials
                and trial_id not in self._completed_trials and not self._finished_in_study(trial_id)):
            self._ot_trials[trial_id].report(float(result[self.metric]), int(result["step"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._ot_trials:  # see __setstate__
            log.warning("trial %s is not in the Optuna study; its result is not recorded there", trial_id)
            return
        status = (result or {}).get("status")
        if status == "running":  # Tune hands the result that made the scheduler stop a trial only to this call
            self.on_trial_result(trial_id, result)
        if status in ("running", "failed"):  # no final value: pruned (stopped early) or failed
            super().on_trial_complete(trial_id, None, error=error or status == "failed")
        else:
            super().on_trial_complete(trial_id, result, error)
        _persist_study()

    # -- pickling (Tune's tuner.pkl and searcher checkpoints): the study by name and trial ids, not its storage
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_storage"] = self._storage.url if self._storage is not None else None
        state["_ot_study"] = None
        state["_ot_trials"] = {tid: t._trial_id for tid, t in self._ot_trials.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import optuna

        state = dict(state)
        trial_ids, pickled_url = state.pop("_ot_trials"), state.pop("_storage")
        url = _INVOCATION.study_url or pickled_url
        self.__dict__.update(state)
        self._storage = optuna.storages.RDBStorage(url)
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage,
                                           sampler=self._sampler, pruner=optuna.pruners.NopPruner())
        known = {t._trial_id for t in self._ot_study.get_trials(deepcopy=False)}
        lost = sorted(tid for tid, ot_id in trial_ids.items() if ot_id not in known)
        if lost:  # a study older than the snapshot (not expected: see the class docstring)
            log.warning("the Optuna study at %s lacks the trials of %s; their results will not be recorded", url,
                        ", ".join(lost))
        self._ot_trials = {tid: optuna.trial.Trial(self._ot_study, ot_id)
                           for tid, ot_id in trial_ids.items() if ot_id in known}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__getstate__(), handle)

    def restore(self, checkpoint_path: str) -> None:
        """Read back what :meth:`save` wrote, with only Optuna's, Ray's search and NumPy's classes importable
        (:func:`~harness.files.load_checked_pickle`): a snapshot in shared storage crafted to run code is refused."""
        from harness.files import load_checked_pickle

        state = load_checked_pickle(checkpoint_path, _SEARCHER_MODULES, _SEARCHER_FUNCTIONS,
                                    advice="delete the sweep's Tune experiment (ray/sweep) to start its search again")
        self.__setstate__(state)


@dataclass(frozen=True)
class SweepOutcome:
    metric: str
    mode: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: str | None
    num_trials: int
    storage: str
    stopped_early: int = 0  # by the ASHA scheduler
    scheduler: str | None = None
    select_on: str = "validation"  # "test": the best value was measured on the novel classes' test images
    scored_classes: tuple[int, ...] = ()  # the classes whose held-out images scored the configurations

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, default=str))


def run_sweep(
    suite: Suite,
    run_dir: Path,
    *,
    address: str | None = None,
    device: str = "auto",
    num_cpus: int | None = None,
    verbose: int = 0,
    tracking: TrackingContext | None = None,
    seed: int = 0,
    storage: RunStorage | None = None,
    progress: RunProgress | None = None,
) -> SweepOutcome:
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    if suite.sweep is None:
        raise ValueError(f"suite {suite.name!r} has no sweep section")
    sweep = suite.sweep
    run_dir = Path(run_dir).resolve()
    sweep_dir = run_dir / "sweep"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage_url = f"sqlite:///{sweep_dir / 'optuna.db'}"
    base = selection_spec(suite, suite.method_entry(sweep.method), suite.protocol.shots[0], suite.protocol.seeds[0])

    searcher = FinalMetricOptunaSearch(
        space=optuna_space(sweep.space),
        metric=sweep.metric,
        mode=sweep.mode,
        study_name=f"{suite.name}-{sweep.method}",
        storage=optuna.storages.RDBStorage(storage_url),
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    search_alg = ConcurrencyLimiter(searcher, max_concurrent=sweep.max_concurrent) if sweep.max_concurrent else searcher
    tune_config: dict[str, Any] = {"search_alg": search_alg, "num_samples": sweep.num_samples}
    intermediate, scheduler_name = None, None
    if sweep.asha is not None:
        from ray.tune.schedulers import ASHAScheduler

        asha = sweep.asha
        tune_config["scheduler"] = ASHAScheduler(
            time_attr="step", metric=sweep.metric, mode=sweep.mode, max_t=base.budget.steps,
            grace_period=asha.grace_period, reduction_factor=asha.reduction_factor,
        )
        intermediate = ((sweep.metric,), asha.evaluation_interval)
        scheduler_name = (f"ASHA (grace period {asha.grace_period} steps, reduction factor {asha.reduction_factor:g}, "
                          f"evaluations every {asha.evaluation_interval} steps)")
    # the metric arrives with a trial's last report only; checkpoint reports before it do not carry it
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    _INVOCATION.study_url, _INVOCATION.storage, _INVOCATION.sweep_dir = storage_url, storage, sweep_dir
    try:
        grid = _fit(
            [base], run_dir, SWEEP_EXPERIMENT, {"spec": base.model_dump(mode="json")},
            address=address, num_cpus=num_cpus, device=device, max_failures=suite.resources.max_failures,
            verbose=verbose, tracking=tracking, tune_config=tune_config, storage=storage, intermediate=intermediate,
            progress=progress,
        )
    finally:
        _INVOCATION.study_url, _INVOCATION.storage, _INVOCATION.sweep_dir = None, None, None
    finished = [r for r in grid if r.metrics and r.metrics.get("status") == "ok" and sweep.metric in r.metrics]
    stopped = sum(1 for r in grid if r.metrics and r.metrics.get("status") == "running" and r.error is None)
    best_value, best_params, best_trial = None, {}, None
    if finished:
        pick = min if sweep.mode == "min" else max
        best = pick(finished, key=lambda r: float(r.metrics[sweep.metric]))
        best_params = {k: v for k, v in best.config.items() if k != "spec"}
        best_value = float(best.metrics[sweep.metric])
        best_trial = _spec_of(best.config).trial_id
    outcome = SweepOutcome(sweep.metric, sweep.mode, best_value, best_params, best_trial, len(grid), storage_url,
                           stopped, scheduler_name, sweep.select_on, base.novel_classes)
    outcome.write(sweep_dir / "best.json")
    return outcome
