"""Optuna sweeps through Ray Tune: distinct sampled configurations, a best one, a persistent Optuna study."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from harness.executors.sweep import optuna_space, run_sweep
from harness.suite import ParamSpace, parse_suite

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _local_ray_without_token(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


def test_space_becomes_optuna_distributions():
    space = optuna_space({
        "n": ParamSpace.model_validate({"int": [1, 8]}),
        "lr": ParamSpace.model_validate({"loguniform": [1e-5, 1e-3]}),
        "p": ParamSpace.model_validate({"uniform": [0.0, 1.0]}),
        "norm": ParamSpace.model_validate({"choice": ["batch", "none"]}),
    })
    assert isinstance(space["n"], optuna.distributions.IntDistribution) and (space["n"].low, space["n"].high) == (1, 8)
    assert space["lr"].log and not space["p"].log
    assert space["norm"].choices == ("batch", "none")


def test_sweep_of_four_samples_gives_four_configurations_and_a_best_one(tmp_path):
    data = yaml.safe_load((ROOT / "suites" / "smoke.yaml").read_text())
    data["methods"] = [{"name": "cgan", "params": {"width": 8}, "budget": {"steps": 5}}]
    data["evaluation"]["metrics"] = ["fid"]
    data["protocol"]["validation_classes"] = [2]  # base digit 2 plays the novel role while choosing
    data["protocol"]["validation_classes"] = [2]
    data["sweep"] = {"method": "cgan", "metric": "fid", "mode": "min", "num_samples": 4, "max_concurrent": 2,
                     "space": {"lr_g": {"loguniform": [1e-5, 1e-3]}, "lr_d": {"loguniform": [1e-5, 1e-3]},
                               "sampling": {"choice": ["pooled", "class_balanced"]}}}
    suite = parse_suite(data, "sweep.yaml")
    outcome = run_sweep(suite, tmp_path, num_cpus=2, device="cpu", verbose=0)

    study = optuna.load_study(study_name="smoke-cgan", storage=outcome.storage)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 4
    configurations = {tuple(sorted(t.params.items())) for t in finished}
    assert len(configurations) == 4
    assert outcome.best_value == pytest.approx(min(t.value for t in finished))
    assert set(outcome.best_params) == {"lr_g", "lr_d", "sampling"}
    best = json.loads((tmp_path / "sweep" / "best.json").read_text())
    assert best["best_params"] == outcome.best_params
    results = [json.loads(p.read_text()) for p in tmp_path.glob("trials/*/result.json")]
    assert len(results) == 4 and {r["spec"]["params"]["lr_g"] for r in results} == {
        t.params["lr_g"] for t in finished}
    # every configuration was scored on the validation class, held out from its training images; the novel digits
    # 3 and 4 were neither trained on nor scored
    assert all(r["spec"]["novel_classes"] == [2] and r["spec"]["base_classes"] == [0, 1] for r in results)
    assert all(r["provenance"]["heldout_from"] == "train" and r["spec"]["selection"] == "validation" for r in results)
    assert all(set(r["provenance"]["shot_indices"]) == {"2"} for r in results)
    assert (best["select_on"], best["scored_classes"]) == ("validation", [2])
    from harness.report import build_report

    report = (build_report(tmp_path) / "README.md").read_text()
    assert "Scored on validation classes 2" in report and "Chosen on test images" not in report


def test_asha_stops_unpromising_trials_and_the_best_is_a_complete_one(tmp_path):
    """One trial at a time (deterministic scheduling): ASHA at rungs 4 and 8 of 16 steps, halving; stopped trials are
    recorded as stopped with their intermediate FIDs, pruned in the study, and never picked as the best."""
    data = yaml.safe_load((ROOT / "suites" / "smoke.yaml").read_text())
    data["methods"] = [{"name": "cgan", "params": {"width": 8}, "budget": {"steps": 16}}]
    data["evaluation"]["metrics"] = ["fid"]
    data["protocol"]["validation_classes"] = [2]
    data["sweep"] = {"method": "cgan", "metric": "fid", "mode": "min", "num_samples": 6, "max_concurrent": 1,
                     "space": {"lr_g": {"loguniform": [1e-6, 1e-2]}, "lr_d": {"loguniform": [1e-6, 1e-2]}},
                     "asha": {"grace_period": 4, "reduction_factor": 2}}
    suite = parse_suite(data, "sweep.yaml")
    outcome = run_sweep(suite, tmp_path, num_cpus=2, device="cpu", verbose=0)

    study = optuna.load_study(study_name="smoke-cgan", storage=outcome.storage)
    state = optuna.trial.TrialState
    complete = [t for t in study.trials if t.state == state.COMPLETE]
    pruned = [t for t in study.trials if t.state == state.PRUNED]
    assert len(study.trials) == 6 and len(complete) + len(pruned) == 6
    assert pruned and outcome.stopped_early == len(pruned) and "ASHA" in outcome.scheduler
    for t in pruned:  # stopped at a rung, with the values seen up to it
        assert max(t.intermediate_values) in (4, 8) and set(t.intermediate_values) <= {4, 8, 12}
    for t in complete:  # every evaluation before the last step, then the final value as the objective
        assert sorted(t.intermediate_values) == [4, 8, 12]
    assert outcome.best_value == pytest.approx(min(t.value for t in complete))

    results = [json.loads(p.read_text()) for p in tmp_path.glob("trials/*/result.json")]
    stopped = [r for r in results if r["status"] == "stopped"]
    assert len(results) == 6 and len(stopped) == len(pruned)
    for r in stopped:
        assert r["metrics"] == {} and "stopped by the Tune scheduler" in r["error"]
        assert [e["step"] for e in r["evaluations"]] == list(range(4, r["evaluations"][-1]["step"] + 1, 4))
    fids_at_4 = {round(r["evaluations"][0]["fid"], 6) for r in results}
    assert {round(t.intermediate_values[4], 6) for t in study.trials} == fids_at_4

    from harness.report import build_report

    text = (build_report(tmp_path) / "README.md").read_text()
    assert f"{len(pruned)} stopped early by the sweep's scheduler" in text
    assert f"{len(pruned)} trials stopped early (pruned)" in text and "Failed trials" not in text


@pytest.mark.parametrize("elsewhere", [False, True], ids=["same-run-dir", "new-machine-from-storage"])
def test_interrupted_sweep_restores_with_the_searchers_history(tmp_path, elsewhere):
    """Kill `harness sweep` after two of four samples; the same command finishes with four samples in all.

    ``new-machine-from-storage``: the sweep keeps its run in shared storage (``--storage file://``); the local run
    directory is deleted and the command re-run with the same run name under another path, as on a new head node —
    the study comes back from storage and the searcher uses it there, not the path it was pickled with."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    data = yaml.safe_load((ROOT / "suites" / "smoke.yaml").read_text())
    data["methods"] = [{"name": "cgan", "params": {"width": 8}, "budget": {"steps": 300}}]
    data["evaluation"]["metrics"] = ["fid"]
    data["resources"] = {"cpu": 2}  # one sample at a time
    data["protocol"]["validation_classes"] = [2]
    data["sweep"] = {"method": "cgan", "metric": "fid", "mode": "min", "num_samples": 4,
                     "space": {"lr_g": {"loguniform": [1e-5, 1e-3]}}}
    suite_file = tmp_path / "sweep.yaml"
    suite_file.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    storage = ["--storage", (tmp_path / "store").as_uri()] if elsewhere else []

    def command(directory: Path) -> list[str]:
        return [sys.executable, "-m", "harness.cli", "sweep", str(suite_file), "--run-dir", str(directory),
                "--no-progress", "--device", "cpu", "--no-tracking", *storage]

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TUNE_GLOBAL_CHECKPOINT_S": "1"}

    def finished(directory: Path) -> dict[str, str]:
        texts = {p.parent.name: p.read_text() for p in directory.glob("trials/*/result.json")}
        return {name: text for name, text in texts.items() if json.loads(text)["status"] == "ok"}

    driver = subprocess.Popen(command(run_dir), cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(finished(run_dir)) < 2:
            assert driver.poll() is None, f"the sweep exited early with {driver.returncode}"
            time.sleep(0.2)
        # kill once Tune's snapshot (trials, searcher) written after the second sample has reached the experiment's
        # storage: what a resume can know (the sync is asynchronous; killed mid-sync, a resume finds an older one)
        second_done = time.time()
        experiment = (tmp_path / "store" / "smoke" / "run" if elsewhere else run_dir) / "ray" / "sweep"
        def snapshot_time() -> float:
            times = []
            for path in experiment.glob("experiment_state*.json"):
                try:
                    times.append(path.stat().st_mtime)
                except FileNotFoundError:  # replaced while we looked
                    pass
            return max(times, default=0.0)

        while time.time() < deadline and snapshot_time() <= second_done + 1:
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = finished(run_dir)
    assert 2 <= len(before) < 4
    if elsewhere:
        for _ in range(50):  # processes of the killed driver's Ray may still be finishing a write
            shutil.rmtree(run_dir, ignore_errors=True)
            if not run_dir.exists():
                break
            time.sleep(0.2)
        assert not run_dir.exists()
        run_dir = tmp_path / "new-head" / run_dir.name

    again = subprocess.Popen(command(run_dir), cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = again.communicate(timeout=420)
    finally:
        if again.poll() is None:
            os.killpg(again.pid, signal.SIGKILL)
    assert again.returncode == 0, stdout[-3000:] + stderr[-3000:]
    after = finished(run_dir)
    assert all(after.get(name) == text for name, text in before.items())  # finished samples not run again
    study = optuna.load_study(study_name="smoke-cgan", storage=f"sqlite:///{run_dir / 'sweep' / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4, [t.state for t in study.trials]
    assert len(after) == 4
    assert json.loads((run_dir / "sweep" / "best.json").read_text())["best_value"] == pytest.approx(
        min(t.value for t in complete))
