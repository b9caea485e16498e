"""One invocation of a suite: its run directory, which trials still need running, and the summary."""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.runtime import git_commit, package_versions
from harness.suite import Suite, TrialSpec, suite_hash
from harness.results import RESULT_FILE, TrialResult, trial_dir_for

RUN_FILE = "run.json"


def new_run_path(suite: Suite, root: Path = Path("runs")) -> Path:
    """``root/<suite>/<timestamp>`` (with a counter if taken); not created."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = root / suite.name / stamp, 1
    while path.exists():
        path, n = root / suite.name / f"{stamp}-{n}", n + 1
    return path


@dataclass
class RunDir:
    path: Path
    suite: Suite

    @classmethod
    def create(cls, suite: Suite, suite_file: Path, root: Path = Path("runs"), path: Path | None = None) -> RunDir:
        """A new ``root/<suite>/<timestamp>`` directory, or ``path`` (reused: finished trials are kept)."""
        path = path or new_run_path(suite, root)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, suite)
        existing = path / RUN_FILE
        if existing.exists():
            previous = json.loads(existing.read_text())
            if previous.get("suite_hash") != suite_hash(suite):
                raise ValueError(
                    f"{path} holds a run of a different suite (hash {previous.get('suite_hash')} != "
                    f"{suite_hash(suite)}); use a new --run-dir"
                )
        (path / "suite.yaml").write_text(yaml.safe_dump(suite.model_dump(mode="json", by_alias=True), sort_keys=False))
        existing.write_text(json.dumps({
            "suite": suite.name,
            "suite_file": str(suite_file),
            "suite_hash": suite_hash(suite),
            "suite_version": suite.version,
            "command": shlex.join(sys.argv),
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "versions": package_versions(),
        }, indent=2))
        return run

    def finished(self, spec: TrialSpec) -> TrialResult | None:
        """The stored result of ``spec`` if it completed in an earlier invocation."""
        return finished_result(self.path, spec)


def finished_result(run_dir: Path, spec: TrialSpec) -> TrialResult | None:
    """The result ``spec`` left in ``run_dir`` if it completed (status ok, same trial id), else None."""
    path = trial_dir_for(run_dir, spec) / RESULT_FILE
    if not path.exists():
        return None
    result = TrialResult.load(path)
    return result if result.status == "ok" and result.trial_id == spec.trial_id else None
