"""Sequential execution in this process: for debugging and the smallest runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from harness.executors.common import dataset_key, prepare
from harness.suite import TrialSpec
from harness.trial import RESULT_FILE, TrialResult, run_trial, trial_dir_for

if TYPE_CHECKING:
    from harness.tracking import TrackingContext

log = logging.getLogger(__name__)


def run_inprocess(
    specs: list[TrialSpec], run_dir: Path, *, device: str = "auto", progress: bool = True,
    tracking: TrackingContext | None = None,
) -> list[TrialResult]:
    """Run ``specs`` one after another; a failed trial is recorded and the suite goes on."""
    datasets = prepare(specs, device)
    results: list[TrialResult] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        suite_task = bar.add_task("trials", total=len(specs))
        for spec in specs:
            key = dataset_key(spec)
            steps_per_model = spec.budget.steps
            step_task = bar.add_task(f"  {spec.name}", total=steps_per_model)

            def on_log(step: int, losses: dict[str, float], info=None, _task=step_task) -> None:
                shown = " ".join(f"{k}={v:.3f}" for k, v in losses.items())
                bar.update(_task, completed=step + 1, description=f"  {spec.name} {shown}")

            try:
                results.append(run_trial(spec, run_dir, dataset=datasets[key], device=device, on_log=on_log,
                                           tracking=tracking))
            except Exception as exc:  # noqa: BLE001 - recorded in the trial's result.json by run_trial
                log.error("trial %s failed: %s", spec.name, exc)
                results.append(TrialResult.load(trial_dir_for(run_dir, spec) / RESULT_FILE))
            bar.remove_task(step_task)
            bar.advance(suite_task)
    return results

