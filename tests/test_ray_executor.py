"""The Ray Tune executor on a local Ray: concurrency, equality with in-process results, resume after a killed driver.

Each test starts its own local Ray with token auth disabled (RAY_AUTH_MODE) and shuts down only what it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from harness.executors import run_inprocess, run_ray
from harness.suite import expand, load_suite
from harness.trial import trial_dir_for

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.yaml"


@pytest.fixture(autouse=True)
def _local_ray_without_token(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


def test_local_ray_runs_two_trials_at_once_and_matches_inprocess(tmp_path):
    specs = expand(load_suite(SMOKE))
    ray_results = run_ray(specs, tmp_path / "ray", device="cpu", num_cpus=2, verbose=0)
    local_results = run_inprocess(specs, tmp_path / "local", device="cpu")
    assert [r.status for r in ray_results] == ["ok", "ok"]
    by_id = {r.trial_id: r for r in local_results}
    for remote in ray_results:
        local = by_id[remote.trial_id]
        assert remote.losses == local.losses  # same seeds, same threads ⇒ same numbers
        spec = next(s for s in specs if s.trial_id == remote.trial_id)
        a = torch.load(trial_dir_for(tmp_path / "ray", spec) / "samples.pt")
        b = torch.load(trial_dir_for(tmp_path / "local", spec) / "samples.pt")
        assert torch.equal(a["images"], b["images"])
    (s1, e1), (s2, e2) = [(r.wall_times["started_at"], r.wall_times["finished_at"]) for r in ray_results]
    assert s1 < e2 and s2 < e1, "the two 1-CPU trials did not overlap on a 2-CPU Ray"


def _slow_smoke(tmp_path: Path) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    data["methods"] = [
        {"name": "cgan", "params": {"width": 16}, "budget": {"steps": 10}},
        {"name": "cgan", "label": "cgan-long", "params": {"width": 16}, "budget": {"steps": 4000}},
    ]
    # Tune keeps the newest 2 checkpoints and snapshots its state every second (below): checkpoints must be seconds
    # apart for a snapshot to land after one, which 100 steps (< 1 s of a width-16 CGAN on a fast CPU) were not
    data["budget"]["checkpoint_every"] = 500
    data["resources"] = {"cpu": 2, "gpu": 0}  # one trial at a time: the short one finishes first
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _snapshot_after_checkpoint(experiment: Path) -> bool:
    """True once Tune's experiment snapshot was written after the long trial's second checkpoint existed, so the
    restored experiment knows a checkpoint to resume from."""
    checkpoints = sorted(experiment.glob("cgan-long*/checkpoint_*"))
    states = list(experiment.glob("experiment_state*.json"))
    if len(checkpoints) < 2 or not states:
        return False
    return max(p.stat().st_mtime for p in states) > checkpoints[1].stat().st_mtime + 0.5


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process group (the driver and the local Ray it started, nothing else) if it is still there."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def test_killed_driver_then_same_command_finishes_only_unfinished_trials(tmp_path):
    suite_file = _slow_smoke(tmp_path)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "harness.cli", "run", str(suite_file), "--run-dir", str(run_dir),
               "--no-progress", "--device", "cpu", "--no-tracking"]
    # the experiment state is snapshotted every second, so the kill below lands after a snapshot knows a checkpoint
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    driver = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    specs = expand(load_suite(suite_file))
    short, long = specs
    short_result = trial_dir_for(run_dir, short) / "result.json"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not _snapshot_after_checkpoint(run_dir / "ray" / "tune"):
            assert driver.poll() is None, f"the driver exited early with {driver.returncode}"
            time.sleep(0.2)
        assert short_result.exists(), "the short trial did not finish before the long one checkpointed"
    finally:
        _kill_group(driver)
    assert not (trial_dir_for(run_dir, long) / "result.json").exists() or \
        json.loads((trial_dir_for(run_dir, long) / "result.json").read_text())["status"] != "ok"
    first_mtime = short_result.stat().st_mtime_ns

    again = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = again.communicate(timeout=420)
    finally:  # on a timeout
        if again.poll() is None:
            _kill_group(again)
    assert again.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "1 already finished" in stdout
    assert short_result.stat().st_mtime_ns == first_mtime  # not run again
    long_result = json.loads((trial_dir_for(run_dir, long) / "result.json").read_text())
    assert long_result["status"] == "ok" and long_result["provenance"].get("resumed") is True
    steps = [r["step"] for r in long_result["losses"]]
    assert steps == sorted(set(steps)) and steps[-1] == 3999  # every logged step once, up to the last
    assert len(list(run_dir.glob("trials/*/result.json"))) == 2


def test_unreachable_address_is_a_clear_error_before_anything_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(SMOKE), "--runs-root", str(tmp_path), "--address",
         "127.0.0.1:1", "--no-progress"],
        cwd=ROOT, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2
    assert "cannot reach a Ray cluster at '127.0.0.1:1'" in out.stderr
    assert not list(tmp_path.glob("*/*/trials/*/result.json"))
