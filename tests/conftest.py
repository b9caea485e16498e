"""Test-session isolation: caches (evaluators, reference features, baselines) and the data root live in a temporary
directory, inherited by the CLI subprocesses the tests start, so tests never read or write the user's caches."""

from __future__ import annotations

import os
import tempfile

_SESSION_DIR = tempfile.mkdtemp(prefix="fewshot-tests-")
os.environ["FEWSHOT_CACHE"] = os.path.join(_SESSION_DIR, "cache")
os.environ["FEWSHOT_DATA"] = os.path.join(_SESSION_DIR, "data")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402  (after the environment above, which must be set before anything imports the harness)
import torch  # noqa: E402


@pytest.fixture
def one_thread():
    """One torch thread for the test (restored after): on a busy 2-core machine two threads that wait for each other
    make tiny networks slow. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
