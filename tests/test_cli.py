"""The `harness` console script end to end (a subprocess, as a user runs it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
HARNESS = shutil.which("harness", path=str(Path(sys.executable).parent)) or "harness"


def harness(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([HARNESS, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_validate_accepts_shipped_suites_and_rejects_a_broken_one(tmp_path):
    ok = harness("validate", *sorted(str(p) for p in (ROOT / "suites").glob("*.yaml")))
    assert ok.returncode == 0, ok.stderr
    assert "smoke" in ok.stdout and "trials" in ok.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text((ROOT / "suites" / "smoke.yaml").read_text().replace("name: dcgan", "name: dcgna"))
    bad = harness("validate", str(broken))
    assert bad.returncode == 1
    assert "broken.yaml: methods[0].name: unknown method 'dcgna' (did you mean 'dcgan'" in bad.stderr


def test_methods_lists_every_builtin():
    out = harness("methods")
    assert out.returncode == 0, out.stderr
    for name in ("dcgan", "wgan", "wgan_gp", "cgan"):
        assert name in out.stdout


def test_run_smoke_suite_in_process_end_to_end_and_rerun_keeps_finished_trials(tmp_path):
    out = harness("run", str(ROOT / "suites" / "smoke.yaml"), "--executor", "inprocess", "--runs-root",
                  str(tmp_path), "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    [run_dir] = list((tmp_path / "smoke").iterdir())
    results = sorted(run_dir.glob("trials/*/result.json"))
    assert len(results) == 2  # dcgan and cgan, one seed, one shots setting
    for path in results:
        result = json.loads(path.read_text())
        assert result["status"] == "ok"
        assert result["provenance"]["data_source"].startswith("embedded")
        assert (path.parent / "samples.png").stat().st_size > 0
    assert json.loads((run_dir / "run.json").read_text())["suite"] == "smoke"
    assert "dcgan-5shot-seed0" in out.stdout

    again = harness("run", str(ROOT / "suites" / "smoke.yaml"), "--run-dir", str(run_dir), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "2 already finished" in again.stdout
    assert sorted(run_dir.glob("trials/*/result.json")) == results


def test_run_rejects_an_invalid_suite_before_running_anything(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text((ROOT / "suites" / "smoke.yaml").read_text().replace("shots: [5]", "shots: [500]"))
    out = harness("run", str(broken), "--runs-root", str(tmp_path / "runs"))
    assert out.returncode == 2
    assert "protocol.shots[0]" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_run_refuses_to_start_without_a_needed_weights_file_and_validate_warns(tmp_path):
    suite = tmp_path / "vgg.yaml"
    suite.write_text((ROOT / "suites" / "smoke.yaml").read_text().replace(
        "  - {name: cgan, params: {width: 16}}",
        f"  - {{name: glico, params: {{perceptual: vgg16, vgg16_weights: {tmp_path / 'missing.pth'}}}}}"))
    checked = harness("validate", str(suite))
    assert checked.returncode == 0, checked.stderr
    assert "methods[1].params" in checked.stdout and "missing.pth" in checked.stdout
    out = harness("run", str(suite), "--runs-root", str(tmp_path / "runs"), "--executor", "inprocess")
    assert out.returncode == 2
    assert "vgg16-397923af.pth" in out.stderr and "missing.pth" in out.stderr
    assert not (tmp_path / "runs").exists()
