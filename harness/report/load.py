"""Loading a report's results: trial results (``result.json``) from a run directory, or from each MLflow child run's
``result.json`` artifact, into the same two DataFrames.

Both sources read the same record, :class:`harness.results.TrialResult`, through the same code: the trial JSON
the run wrote is the one truth (MLflow params and tags are a flattened, truncated copy of it, made for browsing).
So a report from MLflow equals the report from the run directory by construction, and metric directions and
references come from the registry (:mod:`harness.metrics.table`) through :class:`~harness.metrics.value.MetricValue`
either way.

* ``trials``: one row per trial (``TRIAL_COLUMNS``: spec facts, status, provenance as text, flat hyper-parameters;
  ``split``: the spec's class-split id when it has one, None for results written before class splits; ``data``:
  ``few``, or ``full`` for an oracle reference trial);
* ``values``: long, one row per trial × value (``VALUE_COLUMNS``), ``kind`` = metric / final_loss / time, with
  each metric value's registry ``direction`` (a :class:`~harness.metrics.table.Direction`), ``reference`` and
  ``reference_of``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from harness.results import RESULT_FILE, TrialResult

log = logging.getLogger(__name__)

__all__ = ["TRIAL_COLUMNS", "VALUE_COLUMNS", "ReportData", "load", "load_mlflow", "load_run_dir"]

TRIAL_COLUMNS = [
    "trial_id", "name", "label", "method", "data", "shots", "seed", "split", "selection", "status", "error",
    "novel_classes",
    "data_source", "split_hash", "dataset_fingerprint", "evaluator", "evaluator_hash", "evaluator_test_accuracy",
    "git_commit", "host", "params",
]
VALUE_COLUMNS = ["trial_id", "kind", "key", "value", "std", "direction", "reference", "reference_of", "metric"]
_PROVENANCE_KEYS = ("data_source", "split_hash", "dataset_fingerprint", "evaluator", "evaluator_hash",
                    "evaluator_test_accuracy", "git_commit", "host")

ImageSource = Callable[[str, str], "bytes | None"]  # (trial_id, "samples" | "shots") -> PNG bytes


@dataclass
class ReportData:
    """Everything a report shows, independent of where it came from."""

    trials: pd.DataFrame
    values: pd.DataFrame
    suite: dict[str, Any]
    run: dict[str, Any]
    source: str
    image: ImageSource
    sweep_dir: Path | None = None
    run_dir: Path | None = None  # the run directory, when it exists on this machine


def _text(value: Any) -> str | None:
    """A provenance value as one string (lists as compact JSON); None for a missing or empty one."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return text or None


def _trial_row(r: TrialResult) -> dict[str, Any]:
    from harness.tracking import flatten  # the method config as the flat strings MLflow's hp.* params hold

    spec = r.spec
    return {
        "trial_id": r.trial_id, "name": r.name, "label": spec["label"], "method": spec["method"],
        "data": spec.get("data") or "few",  # "full": an oracle reference (results before `data` existed: few)
        "shots": int(spec["shots"]), "seed": int(spec["seed"]), "split": _text(spec.get("split")),
        "selection": spec.get("selection") or "none",
        "status": r.status, "error": r.error or None,
        "novel_classes": _text(list(spec.get("novel_classes") or [])),
        **{k: _text(r.provenance.get(k)) for k in _PROVENANCE_KEYS},
        "params": json.dumps(flatten("", r.provenance.get("method_config") or {}), sort_keys=True),
    }


def _value_rows(r: TrialResult) -> list[dict[str, Any]]:
    rows = [{"trial_id": r.trial_id, "kind": "metric", "key": key, "value": m.value, "std": m.std,
             "direction": m.direction, "reference": m.reference, "reference_of": m.reference_of, "metric": m.metric}
            for key, m in r.metrics.items()]
    plain = {"std": None, "direction": None, "reference": False, "reference_of": None, "metric": None}
    rows += [{"trial_id": r.trial_id, "kind": "final_loss", "key": k, "value": float(v), **plain}
             for k, v in r.final_losses.items()]
    rows += [{"trial_id": r.trial_id, "kind": "time", "key": k, "value": float(v), **plain}
             for k, v in r.wall_times.items() if k.endswith("_s")]
    return rows


def frames(results: list[TrialResult]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``trials`` and ``values`` frames of ``results``, sorted so that either source gives identical frames."""
    t = pd.DataFrame([_trial_row(r) for r in results], columns=TRIAL_COLUMNS)
    t["shots"] = t["shots"].astype("int64")
    t["seed"] = t["seed"].astype("int64")
    t["evaluator_test_accuracy"] = pd.to_numeric(t["evaluator_test_accuracy"], errors="coerce").astype("float64")
    for column in TRIAL_COLUMNS:
        if column not in ("shots", "seed", "evaluator_test_accuracy"):
            t[column] = t[column].astype(object).where(t[column].notna(), None)
    t = t.sort_values(["shots", "label", "seed", "trial_id"], kind="stable").reset_index(drop=True)
    v = pd.DataFrame([row for r in results for row in _value_rows(r)], columns=VALUE_COLUMNS)
    v["value"] = v["value"].astype("float64")
    v["std"] = v["std"].astype("float64")
    v["reference"] = v["reference"].astype(bool)
    for column in ("trial_id", "kind", "key", "direction", "reference_of", "metric"):
        v[column] = v[column].astype(object).where(v[column].notna(), None)
    v = v.sort_values(["trial_id", "kind", "key"], kind="stable").reset_index(drop=True)
    return t, v


def load_run_dir(run_dir: Path) -> ReportData:
    """A run directory's JSON store: ``trials/*/result.json``, ``run.json``, ``suite.yaml``."""
    from harness.report.images import grid_from_tensor

    run_dir = Path(run_dir)
    results, directories = [], {}
    for path in sorted(run_dir.glob(f"trials/*/{RESULT_FILE}")):
        r = TrialResult.load(path)
        results.append(r)
        directories[r.trial_id] = path.parent
    t, v = frames(results)

    def image(trial_id: str, which: str) -> bytes | None:
        directory = directories.get(trial_id)
        if directory is None:
            return None
        png = directory / f"{which}.png"
        if png.is_file():
            return png.read_bytes()
        if which == "samples" and (directory / "samples.pt").is_file():
            classes = json.loads(t.loc[t.trial_id == trial_id].iloc[0]["novel_classes"] or "[]")
            return grid_from_tensor(directory / "samples.pt", classes)
        return None

    return ReportData(t, v, _read_yaml(run_dir / "suite.yaml"), _read_json(run_dir / "run.json"),
                      f"run directory {run_dir.resolve()}", image,
                      run_dir / "sweep" if (run_dir / "sweep").is_dir() else None, run_dir)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


class _Artifacts:
    """Downloads single artifacts of MLflow runs (None when one is missing), without MLflow's progress bars."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def get(self, run_id: str, artifact: str) -> bytes | None:
        quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
        if quiet:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        try:
            with tempfile.TemporaryDirectory(prefix="harness-report-") as tmp:
                return Path(self.client.download_artifacts(run_id, artifact, tmp)).read_bytes()
        except Exception:  # noqa: BLE001 - a missing artifact is shown as missing
            return None
        finally:
            if quiet:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)


def _parent_run(client: Any, experiment: str, tracking_uri: str, run_id: str | None) -> tuple[str, Any]:
    from harness import tracking as tr

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    if run_id is None:
        parents = client.search_runs([exp.experiment_id], f"tags.`{tr.KIND_TAG}` = 'suite'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
        if not parents:
            raise ValueError(f"MLflow experiment {experiment!r} has no harness parent run")
        run_id = parents[0].info.run_id
    return exp.experiment_id, client.get_run(run_id)


def load_mlflow(experiment: str, tracking_uri: str, run_id: str | None = None) -> ReportData:
    """The trials of one parent run (default: the newest) of MLflow experiment ``experiment``: each child run's
    ``result.json`` artifact. A child run without one (a trial still running, or killed before it wrote its
    result) is left out, with a warning."""
    from harness import tracking as tr

    client = tr.client_for(tracking_uri)
    experiment_id, parent = _parent_run(client, experiment, tracking_uri, run_id)
    run_id = parent.info.run_id
    artifacts = _Artifacts(client)
    results, run_ids = [], {}
    for child in tr.child_runs(client, tr.TrackingContext(tracking_uri, experiment_id, run_id)):
        text = artifacts.get(child.info.run_id, RESULT_FILE)
        if text is None:
            log.warning("MLflow run %s (%s) has no %s artifact: left out of the report", child.info.run_id,
                        child.info.run_name, RESULT_FILE)
            continue
        source = f"{RESULT_FILE} of MLflow run {child.info.run_id}"
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{source}: not valid JSON ({exc})") from None
        r = TrialResult.from_dict(data, source)
        if r.trial_id in run_ids:  # a trial has one child run; never count one twice
            continue
        run_ids[r.trial_id] = child.info.run_id
        results.append(r)
    t, v = frames(results)

    def image(trial_id: str, which: str) -> bytes | None:
        run = run_ids.get(trial_id)
        return artifacts.get(run, f"{which}.png") if run else None

    suite_text, run_text = artifacts.get(run_id, "suite/suite.yaml"), artifacts.get(run_id, "suite/run.json")
    suite = (yaml.safe_load(suite_text) or {}) if suite_text else {}
    tags = parent.data.tags
    run = json.loads(run_text) if run_text else {  # a parent run logged without its run.json artifact
        "suite": experiment, "suite_hash": tags.get("harness.suite_hash"), "command": tags.get("harness.command"),
        "git_commit": tags.get("harness.git_commit"),
        "versions": {k[len("version."):]: v for k, v in tags.items() if k.startswith("version.")},
    }
    recorded = tags.get("harness.run_dir")
    run_dir = Path(recorded) if recorded and Path(recorded).is_dir() else None
    sweep = run_dir / "sweep" if run_dir is not None and (run_dir / "sweep").is_dir() else None
    return ReportData(t, v, suite, run, f"MLflow experiment {experiment!r}, parent run {run_id} at {tracking_uri}",
                      image, sweep, run_dir)


def load(source: Path | str, *, tracking_uri: str | None = None, run_id: str | None = None) -> ReportData:
    """A run directory (it has run.json or trials/) or, with a tracking URI, an MLflow experiment name."""
    path = Path(source)
    if path.is_dir() and ((path / "run.json").exists() or (path / "trials").is_dir()):
        return load_run_dir(path)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        raise ValueError(f"{source!r} is not a run directory (no run.json or trials/); to report an MLflow "
                         "experiment give its tracking URI (--tracking-uri or MLFLOW_TRACKING_URI)")
    return load_mlflow(str(source), uri, run_id)
