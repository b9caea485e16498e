"""Trial callbacks: small no-op hooks the trial loop calls (the shape of Lightning's ``Callback``).

The loop in :func:`harness.trial.run_trial` owns *when* things happen — a loss record every ``budget.log_every``
steps, a checkpoint every ``budget.checkpoint_every`` steps and after each per-class model, the divergence check —
and callbacks own *what* happens then: tracking, Tune reporting, writing checkpoints, progress. Executors build the
callbacks; the trial never imports tracking or an executor. Torch-free.

Order of the hooks in one trial::

    on_start                    the data are split and the method is built (``trial.provenance`` holds both)
    on_log*                     every ``log_every`` steps and the last step of each fitted model, losses as floats
    on_step_end*                every generator step (after ``on_log``): e.g. an intermediate evaluation's schedule
    on_evaluation*              after ``trial.evaluate`` (intermediate metric values during training)
    on_checkpoint*              the trial's resumable state, at the loop's checkpoint schedule
    on_finish                   always, with the result as written to ``result.json`` (ok, failed or stopped)

A callback may raise :class:`TrialStopped` from ``on_log``, ``on_step_end``, ``on_evaluation`` or ``on_checkpoint``
(a scheduler's decision): the trial ends as ``stopped``. Any other exception fails the trial, so callbacks whose
failure must not cost a result (tracking) catch their own errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.api import Budget
    from harness.results import TrialResult
    from harness.suite import TrialSpec

__all__ = ["TrialCallback", "TrialInfo", "TrialStopped", "call_all"]


class TrialStopped(Exception):
    """The executor's scheduler stopped the trial early (a sweep's ASHA): not a failure. ``run_trial`` records the
    trial as ``stopped``, with the intermediate evaluations it reached, and returns."""


@dataclass
class TrialInfo:
    """What callbacks know of the running trial. ``provenance`` grows as the trial proceeds (data, method config);
    ``evaluate`` (set by the loop once the method is built) samples the model being fitted and returns the pooled
    values of the named metrics, leaving training unchanged. ``budget`` is the one the fit runs: the spec's, with its
    steps resolved for the task when it counts epochs (set once the method is built)."""

    spec: TrialSpec
    trial_dir: Path
    provenance: dict[str, Any] = field(default_factory=dict)
    evaluate: Callable[[tuple[str, ...]], dict[str, float]] | None = None
    budget: Budget | None = None

    @property
    def steps(self) -> int:
        """Generator steps of the fit (per fitted model)."""
        return (self.budget or self.spec.budget).steps

    @property
    def method_config(self) -> dict[str, Any]:
        return self.provenance.get("method_config", {})


class TrialCallback:
    """Override what you need; every hook defaults to doing nothing."""

    def on_start(self, trial: TrialInfo) -> None:
        """The split is made and the method built; ``trial.provenance`` holds the data and method facts."""

    def on_log(self, trial: TrialInfo, step: int, losses: dict[str, float], info: dict[str, Any]) -> None:
        """A loss record of generator step ``step`` (0-based); ``info`` names the class for per-class models."""

    def on_step_end(self, trial: TrialInfo, step: int) -> None:
        """Every generator step, after ``on_log`` and before a checkpoint: keep it cheap."""

    def on_evaluation(self, trial: TrialInfo, steps_done: int, values: dict[str, float]) -> None:
        """Intermediate metric values after ``steps_done`` steps (see :class:`harness.trial.IntermediateEvaluation`)."""

    def on_checkpoint(self, trial: TrialInfo, state: dict[str, Any]) -> None:
        """The trial's resumable state (``run_trial(restore=state)`` continues from it); persist it or ignore it."""

    def on_finish(self, trial: TrialInfo, result: TrialResult) -> None:
        """The trial ended; ``result`` is what ``result.json`` in ``trial.trial_dir`` now holds."""


def wants(callbacks: Sequence[TrialCallback], hook: str) -> bool:
    """Whether any callback overrides ``hook``: the loop skips building a checkpoint state nobody keeps."""
    return any(getattr(type(cb), hook) is not getattr(TrialCallback, hook) for cb in callbacks)


def call_all(callbacks: Sequence[TrialCallback], hook: str, *args: Any) -> None:
    for callback in callbacks:
        getattr(callback, hook)(*args)
