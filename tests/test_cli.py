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


def test_a_damaged_result_stops_the_run_by_name_until_recomputed_and_a_busy_run_dir_is_refused(tmp_path):
    smoke, run_dir = str(ROOT / "suites" / "smoke.yaml"), tmp_path / "run"
    common = ("--executor", "inprocess", "--methods", "dcgan", "--run-dir", str(run_dir), "--no-progress",
              "--no-tracking")
    first = harness("run", smoke, *common)
    assert first.returncode == 0, first.stdout + first.stderr
    [path] = run_dir.glob("trials/*/result.json")
    original = json.loads(path.read_text())
    damaged = path.read_text()[:100]  # a copy interrupted, a full disk
    path.write_text(damaged)

    stopped = harness("run", smoke, *common)
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    assert f"{path}: is not valid JSON" in stopped.stderr and f"--recompute {path.parent.name}" in stopped.stderr
    assert "Nothing was run" in stopped.stderr and path.read_text() == damaged  # nothing recomputed or overwritten

    unknown = harness("run", smoke, *common, "--recompute", "dcgan-5shot-seed9")
    assert unknown.returncode == 2 and "names no trial of this suite; did you mean dcgan-5shot-seed0" in unknown.stderr

    recomputed = harness("run", smoke, *common, "--recompute", "dcgan-5shot-seed0")
    assert recomputed.returncode == 0, recomputed.stdout + recomputed.stderr
    [kept] = path.parent.glob("result.json.recompute-*")
    assert kept.read_text() == damaged  # the damaged file is kept, renamed
    again = json.loads(path.read_text())
    assert again["status"] == "ok" and again["metrics"] == original["metrics"]  # same machine: the same numbers

    holder = subprocess.Popen(  # another invocation holding the run directory
        [sys.executable, "-c", "import sys; from pathlib import Path; from harness.run import lock_run_dir; "
         f"h = lock_run_dir(Path({str(run_dir)!r})); print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = harness("run", smoke, *common)
        assert busy.returncode == 2 and "Traceback" not in busy.stderr
        assert f"{run_dir} is in use by another harness invocation (pid {holder.pid} on" in busy.stderr
    finally:
        holder.communicate("")  # ends it: the kernel releases its lock
    (run_dir / "run.json").write_text("{")  # derived: rewritten with a warning, the results still count
    free = harness("run", smoke, *common)
    assert free.returncode == 0 and "1 already finished" in free.stdout, free.stdout + free.stderr
    assert "run.json: is not valid JSON" in free.stderr and len(list(run_dir.glob("run.json.damaged-*"))) == 1
    assert json.loads((run_dir / "run.json").read_text())["suite"] == "smoke"


def _image_folder_suite(tmp_path: Path) -> tuple[Path, Path]:
    """A suite on a 3-class folder of 4 noise PNGs each; returns (suite file, folder)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for c in "abc":
        (data / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(data / c / f"{i}.png")
    suite = tmp_path / "imgs.yaml"
    suite.write_text("name: imgs\ndataset: {name: image_folder, root: data}\n"
                     "protocol: {base_classes: [a, b], novel_classes: [c], shots: [1], seeds: [0]}\n"
                     "methods: [{name: dcgan, params: {width: 16}}]\nbudget: {steps: 2, batch_size: 4}\n"
                     "evaluation: {samples_per_class: 4, metrics: []}\n")
    return suite, data


def test_a_damaged_image_is_named_before_the_run_directory_exists_and_again_when_loading(tmp_path):
    suite, data = _image_folder_suite(tmp_path)
    checked = harness("validate", str(suite))
    assert checked.returncode == 0, checked.stderr
    assert f"images: all 12 under {data} decode" in checked.stdout

    # damaged with its size and mtime kept, so the check's cache still trusts it: the load in `harness run` finds it
    bad = data / "c" / "1.png"
    st = bad.stat()
    content = bytearray(bad.read_bytes())
    idat = content.index(b"IDAT") + 4
    content[idat:idat + 12] = bytes(12)
    bad.write_bytes(bytes(content))
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns))
    run = ("run", str(suite), "--executor", "inprocess", "--no-tracking", "--no-progress", "--runs-root")
    out = harness(*run, str(tmp_path / "runs"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert f"✗ dataset (image_folder): cannot read image {bad}: " in out.stderr
    [run_dir] = list((tmp_path / "runs" / "imgs").iterdir())
    assert f"no trial started: {run_dir} lost no result and holds no new one" in out.stderr
    assert not (run_dir / "trials").exists()

    # any change of size or mtime is decoded again: named by the pre-run check, before a run directory exists
    bad.write_bytes(bytes(content[:idat]))
    out = harness(*run, str(tmp_path / "runs2"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"{suite}: dataset.root: {bad}: " in out.stderr and "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "runs2").exists()
    again = harness("validate", str(suite))
    assert again.returncode == 1 and f"{suite}: dataset.root: {bad}: " in again.stderr
    assert f"1 of the 12 images under {data} cannot be decoded" in again.stderr
