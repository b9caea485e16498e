"""A suite run in-process and tracked into its run directory's own MLflow store: the finished run several test
modules build on (reports, re-scoring, human studies)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness import tracking as tr
from harness.executors.inprocess import run_inprocess
from harness.run import RunDir
from harness.suite import expand, load_suite


def run_tracked(data: dict[str, Any], root: Path, name: str):
    """Write ``data`` as ``root/<name>.yaml``, run every trial in-process under one tracked parent run, close the run
    (commands on the run directory take its lock) and return (run directory, tracking URI, context, suite,
    results)."""
    suite_file = root / f"{name}.yaml"
    suite_file.write_text(yaml.safe_dump(data, sort_keys=False))
    suite = load_suite(suite_file)
    run = RunDir.create(suite, suite_file, path=root / "run")
    uri = tr.resolve_tracking_uri(None, run.path)
    context = tr.start_run_tracking(suite, suite_file, run.path, uri, executor="inprocess")
    results = run_inprocess(expand(suite), run.path, device="cpu", tracking=context)
    tr.finish_run_tracking(context, "FINISHED")
    run.close()
    return run.path, uri, context, suite, results
