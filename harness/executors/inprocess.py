"""Sequential execution in this process: for debugging and the smallest runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from harness.callbacks import TrialCallback, TrialInfo
from harness.executors.base import Executor
from harness.executors.common import dataset_key, prepare
from harness.results import RESULT_FILE, TrialResult, trial_dir_for
from harness.suite import TrialSpec
from harness.trial import FileCheckpoint, run_trial

if TYPE_CHECKING:
    from harness.console import RunProgress
    from harness.tracking import TrackingContext

log = logging.getLogger(__name__)


class _ProgressCallback(TrialCallback):
    def __init__(self, progress: RunProgress) -> None:
        self.progress = progress

    def on_start(self, trial: TrialInfo) -> None:
        self.progress.started(trial.spec.name)

    def on_finish(self, trial: TrialInfo, result: TrialResult) -> None:
        self.progress.finished(result)


def trial_callbacks(spec: TrialSpec, run_dir: Path, tracking: TrackingContext | None,
                    progress: RunProgress | None) -> tuple[FileCheckpoint, list[TrialCallback]]:
    """What an in-process trial is given: checkpoints in its directory, tracking (this process is the driver),
    progress."""
    checkpoint = FileCheckpoint(trial_dir_for(run_dir, spec))
    callbacks: list[TrialCallback] = [checkpoint] if spec.budget.checkpoint_every else []
    if tracking is not None:
        from harness.tracking import TrackingCallback

        callbacks.append(TrackingCallback(tracking))
    if progress is not None:
        callbacks.append(_ProgressCallback(progress))
    return checkpoint, callbacks


def run_inprocess(
    specs: list[TrialSpec], run_dir: Path, *, device: str = "auto", tracking: TrackingContext | None = None,
    progress: RunProgress | None = None,
) -> list[TrialResult]:
    """Run ``specs`` one after another (resuming from a trial's ``checkpoint.pt``); a failed trial is recorded and
    the suite goes on."""
    datasets = prepare(specs, device)
    results: list[TrialResult] = []
    for spec in specs:
        checkpoint, callbacks = trial_callbacks(spec, run_dir, tracking, progress)
        restore = checkpoint.load() if spec.budget.checkpoint_every else None
        try:
            results.append(run_trial(spec, run_dir, dataset=datasets[dataset_key(spec)], device=device,
                                     restore=restore, callbacks=callbacks))
        except Exception as exc:  # noqa: BLE001 - recorded in the trial's result.json by run_trial
            log.info("trial %s failed: %s", spec.name, exc)
            results.append(TrialResult.load(trial_dir_for(run_dir, spec) / RESULT_FILE))
    return results


class InProcessExecutor(Executor):
    name = "inprocess"
    description = "one trial after another in this process (debugging, the smallest runs)"

    def run(self, specs, run_dir, *, device, tracking, progress):
        from harness.run import finished_result

        run_dir = Path(run_dir)
        kept = {s.trial_id: finished_result(run_dir, s) for s in specs}
        pending = [s for s in specs if kept[s.trial_id] is None]
        fresh = {r.trial_id: r for r in run_inprocess(pending, run_dir, device=device, tracking=tracking,
                                                       progress=progress)}
        return [kept[s.trial_id] or fresh[s.trial_id] for s in specs]
