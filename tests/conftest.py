"""Test-session isolation: caches (evaluators, reference features, baselines) and the data root live in a temporary
directory, inherited by the CLI subprocesses the tests start, so tests never read or write the user's caches."""

from __future__ import annotations

import os
import sys
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


# The test process ends without the interpreter's finalisation. CI's run of commit d2ea08d printed "772 passed" and
# then died of a segmentation fault (exit 139) while the process tore itself down; two full runs on another machine
# (one under gdb) exited cleanly, so the crash is intermittent. By then this one process has started and shut down
# local Ray clusters many times, and it still holds ~36 native threads (torch's pool, gRPC's from Ray's client, tqdm's
# monitor); C extensions finalised in arbitrary order around such threads is a known source of exit-time crashes
# (e.g. ray-project/ray#31145, restarting Ray in one test process). Every result has been reported by the time this
# hook runs, so ending with the session's own exit status loses nothing. FEWSHOT_TESTS_FULL_TEARDOWN=1 lets the
# interpreter finalise as usual (to chase the crash itself; PYTHONFAULTHANDLER=1, set by .ci/run, prints its stacks).
_session_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _session_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if os.environ.get("FEWSHOT_TESTS_FULL_TEARDOWN") == "1" or not _session_status:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_session_status[-1])
