"""The test process ends without the interpreter's finalisation (tests/conftest.py); its exit status is still
pytest's, and FEWSHOT_TESTS_FULL_TEARDOWN=1 brings the usual teardown back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def run_inner(tmp_path: Path, body: str, full_teardown: bool) -> tuple[subprocess.CompletedProcess, bool]:
    """A one-test session with this suite's conftest; the test registers an atexit handler that leaves a file, so
    the file says whether the interpreter finalised."""
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    marker = tmp_path / "finalised"
    (tmp_path / "test_one.py").write_text(
        "import atexit, pathlib\n\n\ndef test_one():\n"
        f"    atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n    {body}\n")
    env = {k: v for k, v in os.environ.items() if k != "FEWSHOT_TESTS_FULL_TEARDOWN"}
    if full_teardown:
        env["FEWSHOT_TESTS_FULL_TEARDOWN"] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return proc, marker.exists()


@pytest.mark.parametrize(("body", "status"), [("assert 1 == 1", 0), ("assert 1 == 2", 1)])
def test_the_exit_status_is_the_sessions_and_finalisation_is_skipped(tmp_path, body, status):
    proc, finalised = run_inner(tmp_path, body, full_teardown=False)
    assert proc.returncode == status, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert ("1 passed" if status == 0 else "1 failed") in proc.stdout  # the summary came before the exit
    assert not finalised


def test_full_teardown_on_request(tmp_path):
    proc, finalised = run_inner(tmp_path, "assert 1 == 2", full_teardown=True)
    assert proc.returncode == 1
    assert finalised
