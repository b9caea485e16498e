"""benchmarks/gpu_check.py without a GPU: the part runner (selection, budget, failures, the no-CUDA stop) with
stand-in parts, and one real CPU dry run of every part (the smoke suite, Ray, a few tiny trials)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

FILES = {"gpu_check.md", "gpu_check.json", "gpu_check.log"}


def _read(out: Path) -> dict:
    assert {p.name for p in out.iterdir()} == FILES
    return json.loads((out / "gpu_check.json").read_text())


@pytest.fixture
def fake_parts(monkeypatch):
    """Every part replaced by one that records that it ran and returns a small result; tests swap single parts."""
    ran: list[str] = []

    def fake(name):
        def part(check):
            ran.append(name)
            return {"reason": f"fake {name}"}
        return part

    for name in gpu_check.PARTS_ORDER:
        monkeypatch.setitem(gpu_check.PARTS, name, fake(name))
    return ran


def test_parts_selection_runs_only_those_in_order(tmp_path, fake_parts):
    code = gpu_check.main(["--dry-run-cpu", "--parts", "training,env", "--out", str(tmp_path)])
    record = _read(tmp_path)
    assert code == 0
    assert fake_parts == ["env", "training"]
    assert record["parts_selected"] == ["env", "training"]
    assert set(record["parts"]) == {"env", "training"}
    assert all(p["status"] == "ok" for p in record["parts"].values())


def test_unknown_part_is_a_usage_error(tmp_path, fake_parts):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--dry-run-cpu", "--parts", "env,nope", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert fake_parts == []


def test_budget_spent_skips_the_remaining_parts(tmp_path, fake_parts, monkeypatch):
    def slow_env(check):  # as if the part took 100 s: 4 s are left, below every later part's minimum
        fake_parts.append("env")
        check.t0 -= 100
        return {}

    monkeypatch.setitem(gpu_check.PARTS, "env", slow_env)
    code = gpu_check.main(["--dry-run-cpu", "--budget-s", "104", "--out", str(tmp_path)])
    record = _read(tmp_path)
    assert code == 0
    assert fake_parts == ["env"]
    assert record["parts"]["env"]["status"] == "ok"
    for name in ("smoke", "training", "shared", "agreement"):
        assert record["parts"][name]["status"] == "skipped"
        assert "budget" in record["parts"][name]["reason"]
    assert "skipped" in (tmp_path / "gpu_check.md").read_text()


def test_a_failing_part_is_recorded_and_the_next_parts_run(tmp_path, fake_parts, monkeypatch):
    def broken(check):
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setitem(gpu_check.PARTS, "training", broken)
    code = gpu_check.main(["--dry-run-cpu", "--out", str(tmp_path)])
    record = _read(tmp_path)
    assert code == 1
    assert fake_parts == ["env", "smoke", "shared", "agreement"]
    assert record["parts"]["training"]["status"] == "failed"
    assert "the GPU caught fire" in record["parts"]["training"]["error"]
    assert "Traceback" in (tmp_path / "gpu_check.log").read_text()
    assert [record["parts"][p]["status"] for p in ("shared", "agreement")] == ["ok", "ok"]


def test_real_run_without_cuda_stops_with_one_line(tmp_path, capsys, monkeypatch, fake_parts):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    code = gpu_check.main(["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "no CUDA device" in err and "--dry-run-cpu" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert fake_parts == []


def test_agreement_rule():
    close = gpu_check.compare([10.0, 12.0, 11.0, 13.0, 9.0, 11.0], [11.0, 12.5, 10.0, 12.0, 10.5, 11.5])
    assert close["agree"] and close["welch_p"] > 0.5
    far = gpu_check.compare([10.0, 11.0, 10.5, 10.2, 10.8, 10.4], [20.0, 21.0, 20.5, 20.2, 20.8, 20.4])
    assert not far["agree"] and far["welch_p"] < 1e-6
    assert far["delta"] == pytest.approx(10.0)


def test_dry_run_on_cpu_runs_every_part(tmp_path):
    """The script as a command (a fresh process, as on the device): every part on the CPU at its tiny scale. Not
    marked slow (about 85 s) so that CI runs the GPU check's whole path, the one no GPU has run yet."""
    out = tmp_path / "out"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run-cpu", "--out",
                           str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    record = _read(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert record["mode"] == "cpu-dry-run"
    assert {n: p["status"] for n, p in record["parts"].items()} == {n: "ok" for n in gpu_check.PARTS_ORDER}
    parts = {n: p["result"] for n, p in record["parts"].items()}
    assert set(parts["env"]["peak_tflops"]) == {"fp32", "tf32", "bf16", "fp16"}
    assert all(t["status"] == "ok" and t["device"] == "cpu" for t in parts["smoke"]["trials"])
    rows = {(r["method"], r["variant"]): r for r in parts["training"]["rows"]}
    assert {("dcgan", "fit-fp32"), ("dcgan", "fit-bf16-cl"), ("dcgan", "plain-fp16-gradscaler"),
            ("cgan", "fit-cl")} <= set(rows)
    assert all(r["steps_per_s"] > 0 and r["mfu"] > 0 for r in rows.values())
    shared = parts["shared"]
    assert shared["runs"]["concurrent"]["resources_gpu"] == 0.5
    assert shared["runs"]["concurrent"]["statuses"] == ["ok", "ok"]
    agreement = parts["agreement"]["metrics"]["fid"]
    assert len(agreement["cpu"]) == len(agreement["cuda"]) == 6
    assert {"agree", "welch_p", "pooled_sd"} <= set(agreement)
    text = (out / "gpu_check.md").read_text()
    assert "CPU DRY RUN" in text and "## Training throughput" in text and "## CPU vs CUDA agreement" in text
    assert "[" in (out / "gpu_check.log").read_text()


def test_shared_without_ray_says_so_instead_of_measuring(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "have_ray", lambda: False)
    code = gpu_check.main(["--dry-run-cpu", "--parts", "shared", "--out", str(tmp_path)])
    record = _read(tmp_path)
    assert code == 0
    assert record["parts"]["shared"]["status"] == "unavailable"
    assert "ray" in record["parts"]["shared"]["result"]["reason"]
    assert "Not measured" in (tmp_path / "gpu_check.md").read_text()


def test_slim_wheel_drops_members_and_rewrites_record(tmp_path):
    import base64
    import hashlib
    import zipfile

    wheel = tmp_path / "ray-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("ray/__init__.py", "x = 1\n")
        z.writestr("ray/jars/ray_dist.jar", b"\0" * 1000)
        z.writestr("ray/rllib/algo.py", "y = 2\n")
        z.writestr("ray-0.dist-info/RECORD", "stale\n")
    gpu_check.slim_wheel(wheel)
    with zipfile.ZipFile(wheel) as z:
        assert sorted(z.namelist()) == ["ray-0.dist-info/RECORD", "ray/__init__.py"]
        assert all(i.compress_type == zipfile.ZIP_LZMA for i in z.infolist())
        record = z.read("ray-0.dist-info/RECORD").decode().splitlines()
        digest = base64.urlsafe_b64encode(hashlib.sha256(b"x = 1\n").digest()).rstrip(b"=").decode()
        assert record == [f"ray/__init__.py,sha256={digest},6", "ray-0.dist-info/RECORD,,"]
