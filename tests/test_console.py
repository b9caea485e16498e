"""What a run prints: one progress line, one line per finished trial (failures included, with their error), and
none of Ray Tune's own tables unless asked for."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from harness.console import RunProgress, headline_text
from harness.metrics.value import metrics_from_json
from harness.results import TrialResult

ROOT = Path(__file__).resolve().parents[1]
HARNESS = shutil.which("harness", path=str(Path(sys.executable).parent)) or "harness"


def _result(name: str, status: str, *, error: str | None = None, evaluations=(), spec=None) -> TrialResult:
    metrics = metrics_from_json({
        "fid": {"value": 41.25, "std": None, "higher_is_better": False, "metric": "fid", "class": None,
                "reference": False, "n": 100},
        "fid/class_5": {"value": 39.0, "std": None, "higher_is_better": False, "metric": "fid", "class": 5,
                        "reference": False, "n": 50},
        "fid_real_floor": {"value": 3.5, "std": None, "higher_is_better": False, "metric": "fid", "class": None,
                           "reference": True, "n": 100},
    }) if status == "ok" else {}
    return TrialResult(trial_id=name, name=name, status=status, spec=spec or {}, metrics=metrics, error=error,
                       wall_times={"fit_s": 12.0}, evaluations=list(evaluations))


def test_finished_trials_get_one_line_each_and_failures_show_their_error():
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    with RunProgress(3, console=console, enabled=False) as progress:
        for name in ("a", "b", "c"):
            progress.started(name)
        assert progress.running == {"a", "b", "c"}
        progress.finished(_result("a", "ok"))
        progress.finished(_result("b", "failed", error="TrialDiverged: non-finite loss at step 7"))
        progress.finished(_result("c", "stopped", evaluations=[{"step": 250, "fid": 80.0}]))
    lines = out.getvalue().splitlines()
    assert lines[0] == "✓ a fit 12 s  fid=41.2"  # headline only: no per-class key, no real-data floor
    assert lines[1] == "✗ b failed: TrialDiverged: non-finite loss at step 7"
    assert lines[2] == "■ c stopped early fit 12 s  fid=80 at step 250"
    assert progress.counts == {"ok": 1, "failed": 1, "stopped": 1} and not progress.running


def test_a_full_data_trial_is_marked_as_a_reference():
    out = io.StringIO()
    with RunProgress(2, console=Console(file=out, width=200, color_system=None), enabled=False) as progress:
        progress.finished(_result("dcgan-full", "ok", spec={"data": "full"}))
        progress.finished(_result("dcgan", "ok", spec={"data": "few"}))
    assert out.getvalue().splitlines() == ["✓ dcgan-full [reference: full data] fit 12 s  fid=41.2",
                                           "✓ dcgan fit 12 s  fid=41.2"]


def test_a_trial_lost_without_a_result_is_reported_as_failed():
    out = io.StringIO()
    progress = RunProgress(1, console=Console(file=out, width=200, color_system=None), enabled=False)
    progress.started("x")
    progress.lost("x", "worker died")
    assert "✗ x failed (no result written): worker died" in out.getvalue()
    assert progress.counts["failed"] == 1


def test_headline_text_limits_the_values_shown():
    result = _result("a", "ok")
    assert headline_text(result, limit=0) == ""
    assert headline_text(result) == "fid=41.2"


def test_default_ray_run_prints_trial_lines_and_no_tune_tables(tmp_path):
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "RAY_AUTH_MODE": "disabled"}
    out = subprocess.run([HARNESS, "run", str(ROOT / "suites" / "smoke.yaml"), "--runs-root", str(tmp_path),
                          "--no-tracking", "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    trial_lines = [line for line in out.stdout.splitlines() if line.startswith("✓ ")]
    assert sorted(line.split()[1] for line in trial_lines) == ["cgan-5shot-seed0", "dcgan-5shot-seed0"]
    assert all("fid=" in line for line in trial_lines)
    for noise in ("Configuration for experiment", "Trial status", "Checkpoint successfully created",
                  "View detailed results here", "ax_failures"):
        assert noise not in text, noise
