"""The trial callback that tracks a trial into its MLflow child run — always from the driver's process.

In-process, the driver runs the trial and this callback is in its callback list. Under Ray the trial runs in a
worker: its Tune reporter ships the same hook calls (``on_start``, ``on_log``, ``on_evaluation``) to the driver in
Tune results, and the driver's Tune callback replays them onto one ``TrackingCallback`` per trial
(:mod:`harness.executors.ray_tune`). One tracking path either way; workers never touch MLflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.callbacks import TrialCallback, TrialInfo
from harness.tracking.runs import TrackingContext, TrialTracker

if TYPE_CHECKING:
    from harness.results import TrialResult


class TrackingCallback(TrialCallback):
    """Logs one trial: params at the start, losses as they arrive, intermediate evaluations, then final metrics,
    images and ``result.json`` at the end. Never raises (see :class:`TrialTracker`)."""

    def __init__(self, context: TrackingContext) -> None:
        self.context = context
        self.tracker: TrialTracker | None = None

    def on_start(self, trial: TrialInfo) -> None:
        if self.tracker is not None:  # a retried trial (its node died): what the failed attempt logged is kept
            self.tracker.flush()
        self.tracker = TrialTracker(self.context, trial.spec)
        self.tracker.start()
        self.tracker.set_config(trial.method_config, trial.provenance)

    def on_log(self, trial: TrialInfo, step: int, losses: dict[str, float], info: dict[str, Any]) -> None:
        if self.tracker is not None:
            self.tracker.log_losses(step, losses, info)

    def on_evaluation(self, trial: TrialInfo, steps_done: int, values: dict[str, float]) -> None:
        if self.tracker is not None:
            self.tracker.log_evaluation(steps_done, values)

    def on_finish(self, trial: TrialInfo, result: TrialResult) -> None:
        if self.tracker is None:  # failed before its split: the child run still records the failure
            self.tracker = TrialTracker(self.context, trial.spec)
            self.tracker.start()
        self.tracker.finish(result, trial.trial_dir)
