"""`harness evaluate RUN_DIR`: re-scoring a tracked in-process run from its saved samples reproduces the stored
values exactly, logs into the same MLflow child runs (never a new one), keeps every earlier value as a metrics version,
adds new metrics to results, MLflow and the report, and refuses missing or short sample files before writing
anything.

The command runs in this process (Typer's test runner), so the run and the re-scoring share one small evaluator
(trained with tiny settings into a temporary cache, the default settings replaced for this module only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from harness import tracking as tr
from harness.cli import app
from harness.metrics import accuracy as accuracy_module
from harness.metrics import evaluator as evaluator_module
from harness.metrics import ndb as ndb_module
from harness.metrics import reference as reference_module
from harness.metrics.cache import CACHE_ENV
from harness.metrics.evaluator import DomainClassifierSettings
from harness.report import load_mlflow, load_run_dir
from harness.results import TrialResult
from tracked import run_tracked

ROOT = Path(__file__).resolve().parents[1]
TINY = DomainClassifierSettings(widths=(8, 16, 16), feature_dim=32, min_steps=60, max_steps=60, epochs=1)
METRICS_RUN = ["is", "fid", "kid", "prc", "class_consistency", "memorisation", "accuracy"]
runner = CliRunner()


def _clear_memory() -> None:
    for module in (evaluator_module, reference_module, accuracy_module, ndb_module):
        module.clear_memory_cache()


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """The smoke suite (two methods, one seed, 4 steps, 40 samples per class, every metric but the new ones) run
    in-process and tracked into the run directory's sqlite store."""
    root = tmp_path_factory.mktemp("rescore")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(root / "cache"))
        mp.setattr(evaluator_module, "DomainClassifierSettings", lambda: TINY)  # the default the trials build
        _clear_memory()
        data = yaml.safe_load((ROOT / "suites" / "smoke.yaml").read_text())
        data["budget"]["steps"] = 4
        data["evaluation"].update(samples_per_class=40, metrics=METRICS_RUN, kid_subsets=10,
                                  accuracy={"steps": 10, "seeds": 1, "width": 4})
        path, _, context, _, results = run_tracked(data, root, "smoke-rescore")
        assert [r.status for r in results] == ["ok", "ok"]
        yield path, context
    _clear_memory()


def _results(run_dir: Path) -> dict[str, TrialResult]:
    return {r.trial_id: r for r in map(TrialResult.load, sorted(run_dir.glob("trials/*/result.json")))}


def _children(context) -> dict[str, list]:
    return tr.iter_children_by_trial(tr.client_for(context.tracking_uri), context)


def _evaluate(*args: str):
    result = runner.invoke(app, ["evaluate", *args, "--no-progress"])
    return result, result.output


def test_rescoring_an_unchanged_run_reproduces_every_stored_value_in_the_same_child_runs(tracked_run):
    run_dir, context = tracked_run
    before, children = _results(run_dir), _children(context)
    assert len(children) == 2 and all(len(runs) == 1 for runs in children.values())
    done, output = _evaluate(str(run_dir))
    assert done.exit_code == 0, output
    assert "2 of 2 trials re-scored" in output and "metrics version 2" in output
    after = _results(run_dir)
    for trial_id, result in after.items():
        stored = before[trial_id].metrics
        assert len(stored) > 30 and {m.metric for m in stored.values()} == set(METRICS_RUN)
        assert result.version_values(2) == stored  # every key, every value, bit for bit
        assert result.version_values(1) == stored and result.metrics == stored
        version = result.metric_versions[1]
        assert version["source"] == "harness evaluate" and version["samples_per_class"] == 40
        assert version["evaluator_hash"] == before[trial_id].provenance["evaluator_hash"]
        assert result.provenance["metrics_version"] == 2
    now = _children(context)
    assert {t: [r.info.run_id for r in runs] for t, runs in now.items()} == \
        {t: [r.info.run_id for r in runs] for t, runs in children.items()}  # the same runs, none added
    assert all(runs[0].data.tags["harness.metrics_version"] == "2" for runs in now.values())


def test_a_new_metric_reaches_results_mlflow_and_the_report_and_earlier_values_stay(tracked_run):
    run_dir, context = tracked_run
    before, children = _results(run_dir), _children(context)
    done, output = _evaluate(str(run_dir), "--metrics", "diversity,ndb")
    assert done.exit_code == 0, output
    for trial_id, result in _results(run_dir).items():
        old = before[trial_id].metrics
        assert {k: v for k, v in result.metrics.items() if k in old} == old  # untouched metrics kept
        new = result.version_values(len(result.metric_versions))
        assert {v.metric for v in new.values()} == {"diversity", "ndb"}
        assert set(result.metrics) == set(old) | set(new)
        assert result.version_values(1) == before[trial_id].version_values(1)  # the trial's own values, retrievable
        run = children[trial_id][0]
        logged = tr.client_for(context.tracking_uri).get_run(run.info.run_id).data.metrics
        assert logged["ndb"] == result.metrics["ndb"].value
        assert logged["diversity_features/class_3"] == result.metrics["diversity_features/class_3"].value
        assert logged["fid"] == old["fid"].value
    now = _children(context)
    assert sorted(now) == sorted(children) and all(len(runs) == 1 for runs in now.values())
    readme = (run_dir / "report" / "README.md").read_text()
    assert "**Fidelity, diversity and copying, 5 shots**" in readme
    header = next(line for line in readme.splitlines() if line.startswith("| method | fid ↓ | diversity_features"))
    assert "ndb ↓" in header and "memorisation (≈ 1)" in header
    from_json, from_mlflow = load_run_dir(run_dir), load_mlflow("smoke", context.tracking_uri)  # result.json re-logged
    pd.testing.assert_frame_equal(from_json.values, from_mlflow.values)


def test_missing_or_short_samples_and_unknown_metrics_are_refused_before_anything_is_written(tracked_run, tmp_path):
    run_dir, _ = tracked_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    texts = {p: p.read_text() for p in copy.glob("trials/*/result.json")}
    short, output = _evaluate(str(copy), "--samples-per-class", "41", "--no-tracking")
    assert short.exit_code == 2
    assert "saved 40 samples of class 3, fewer than the 41 per class asked" in output and "samples.pt" in output
    unknown, output = _evaluate(str(copy), "--metrics", "fdi", "--no-tracking")
    assert unknown.exit_code == 2 and "--metrics[0]: unknown metric 'fdi' (did you mean 'fid'" in output
    bad, output = _evaluate(str(copy), "--evaluator", "inception_v3", "--no-tracking")
    assert bad.exit_code == 2 and "class_consistency needs evaluator" in output
    victim = sorted(copy.glob("trials/*/samples.pt"))[0]
    victim.unlink()
    missing, output = _evaluate(str(copy), "--no-tracking")
    assert missing.exit_code == 2 and f"{victim}: missing" in " ".join(output.split())
    assert "Traceback" not in output
    assert {p: p.read_text() for p in copy.glob("trials/*/result.json")} == texts  # nothing was written


def test_fewer_samples_score_the_first_ones_of_each_class(tracked_run, tmp_path):
    run_dir, _ = tracked_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    done, output = _evaluate(str(copy), "--samples-per-class", "10", "--metrics", "memorisation", "--no-tracking")
    assert done.exit_code == 0, output
    for path in copy.glob("trials/*/result.json"):
        result = TrialResult.load(path)
        version = result.metric_versions[-1]
        assert version["samples_per_class"] == 10 and result.metrics["memorisation"].n == 20
        assert json.loads(path.read_text())["metric_versions"][-1]["metrics"] == ["memorisation"]
    assert torch.load(sorted(copy.glob("trials/*/samples.pt"))[0])["images"].shape[0] == 80  # the file is unchanged
