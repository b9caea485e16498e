"""Test-session isolation: caches (evaluators, reference features, baselines) and the data root live in a temporary
directory, inherited by the CLI subprocesses the tests start, so tests never read or write the user's caches."""

from __future__ import annotations

import os
import tempfile

_SESSION_DIR = tempfile.mkdtemp(prefix="fewshot-tests-")
os.environ["FEWSHOT_CACHE"] = os.path.join(_SESSION_DIR, "cache")
os.environ["FEWSHOT_DATA"] = os.path.join(_SESSION_DIR, "data")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
