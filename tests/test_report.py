"""Comparison reports: from a real (tracked) smoke run directory, the same report from MLflow, the HTML in headless
Chromium, and the statistics and layout on constructed results (CIs, reference rows, directions and targets from the
metric registry, failures, sweeps)."""

from __future__ import annotations

import hashlib
import html.parser
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torchvision.utils import save_image
from typer.testing import CliRunner

from harness import tracking as tr
from harness.cli import app
from harness.metrics.value import metrics_from_json
from harness.report import build_report, fmt, load_mlflow, load_run_dir, mean_ci
from harness.results import TrialResult
from tracked import run_tracked

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.yaml"


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """The smoke suite (two seeds; the cheap downstream-accuracy metric when registered) run in-process, tracked
    into the run directory's default sqlite store."""
    from harness.metrics import METRICS

    root = tmp_path_factory.mktemp("report")
    data = yaml.safe_load(SMOKE.read_text())
    data["protocol"]["seeds"] = [0, 1]
    data["budget"]["steps"] = 10
    if "accuracy" in METRICS:
        data["evaluation"]["metrics"] = ["accuracy"]
        data["evaluation"]["accuracy"] = {"steps": 20, "seeds": 2}
    path, uri, _, suite, results = run_tracked(data, root, "smoke-report")
    assert [r.status for r in results] == ["ok"] * 4
    return path, uri, [m.label or m.name for m in suite.methods], bool(data["evaluation"]["metrics"])


def _table_rows(markdown: str, title: str) -> list[list[str]]:
    """The body rows of the first Markdown table under the line ``**title**`` (or the heading ``## title``)."""
    lines = markdown.splitlines()
    start = lines.index(f"**{title}**") if f"**{title}**" in lines else lines.index(f"## {title}")
    while not lines[start].startswith("|"):
        start += 1
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def test_report_from_a_run_directory_has_every_method_row(tracked_run):
    run_dir, _, labels, has_metrics = tracked_run
    out = build_report(run_dir)
    assert out == run_dir / "report"
    readme = (out / "README.md").read_text()
    tables = ["Final losses and times, 5 shots"] + (["Metrics, 5 shots"] if has_metrics else [])
    for title in tables:
        rows = _table_rows(readme, title)
        values = slice(1, -1) if title.startswith("Metrics") else slice(1, None)  # the last: collapse rate
        assert [r[0] for r in rows if not r[0].startswith("*")] == labels, title
        assert all("±" in cell for r in rows if not r[0].startswith("*") for cell in r[values] if cell), rows
    if has_metrics:
        header = next(line for line in readme.splitlines() if line.startswith("| method | accuracy"))
        assert "accuracy ↑" in header and header.endswith("| collapsed |")  # direction from the registry
        rows = _table_rows(readme, "Metrics, 5 shots")
        assert [r[0] for r in rows if r[0].startswith("*")] == [
            "*best (paired)*", "*real data (reference)*", "*classic_aug (baseline)*"]
        assert rows[0][-1] == "unknown"  # no class_consistency: no collapse verdict, not 0
        assert rows[len(labels)][1] == "tied"  # two seeds cannot make a winner
        assert "**accuracy ↑: paired differences (row − column), 5 shots**" in readme
        assert "over 2 (split, seed) pairs" in readme
    samples = _table_rows(readme, "Samples, 5 shots")
    assert [r[0] for r in samples] == ["real shots (seed 0)", *[f"{m} (seed 0)" for m in labels]]
    for name in [p.split("](")[1].rstrip(")") for r in samples for p in r[1:]]:
        assert (out / name).stat().st_size > 0
    assert "embedded:" in readme and "split hashes" in readme and "git commit" in readme
    assert not (run_dir.parent / "reports").exists() and not (ROOT / "reports" / "smoke").exists()


def test_report_from_mlflow_equals_the_report_from_json(tracked_run, tmp_path):
    run_dir, uri, _, _ = tracked_run
    from_json, from_mlflow = load_run_dir(run_dir), load_mlflow("smoke", uri)
    assert len(from_json.trials) == 4
    pd.testing.assert_frame_equal(from_json.trials, from_mlflow.trials)
    pd.testing.assert_frame_equal(from_json.values, from_mlflow.values)
    a = build_report(run_dir, tmp_path / "json")
    b = build_report("smoke", tmp_path / "mlflow", tracking_uri=uri)
    text_a, text_b = (a / "README.md").read_text(), (b / "README.md").read_text()
    assert text_a.rsplit("Source:", 1)[0] == text_b.rsplit("Source:", 1)[0]
    assert "Source: MLflow experiment 'smoke'" in text_b
    images = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert images and images == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    for path in images:
        if path.parts[0] == "samples":  # the sample grids are the trials' own images, byte for byte
            assert (a / path).read_bytes() == (b / path).read_bytes()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


class _Dom(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.images: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-label" in attrs:
            self.rows.append(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)


def test_html_report_renders_tables_and_images_in_headless_chromium(tracked_run, tmp_path):
    from PIL import Image, ImageStat

    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install -y chromium); the browser test must run in CI")
        pytest.skip("chromium is not installed")
    run_dir, _, labels, _ = tracked_run
    index = build_report(run_dir, tmp_path / "report") / "index.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", index.as_uri()], capture_output=True, text=True,
                         timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = _Dom()
    parser.feed(dom.stdout)
    method_rows = [r["data-label"] for r in parser.rows if r.get("class") == "method"]
    for label in labels:
        assert label in method_rows, (label, method_rows)
    assert parser.images and all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert len(parser.images) >= 1 + 3 * 2  # a chart + (shots row + two methods) × two classes
    assert parser.external == [], "the report must not reference anything outside itself"

    shot = tmp_path / "shot.png"
    done = subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,2000", "--hide-scrollbars",
                           index.as_uri()], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1200, 2000)
        assert max(ImageStat.Stat(image.convert("L")).var) > 0, "blank screenshot"
        assert len(image.convert("L").getcolors(1 << 16) or []) > 16  # text, tables and images, not a flat page


# ----------------------------------------------------------------------- constructed results (fast, exact)


def _write_trial(run_dir: Path, label: str, shots: int, seed: int, metrics: dict, *, status: str = "ok",
                 error: str | None = None, split: int | None = None, method: str | None = None,
                 data: str | None = None) -> None:
    """One trial's result.json; ``split``: a class-split id in the spec (results before class splits have none);
    ``method``: default the label; ``data``: the spec's ``data`` (results before it existed have none)."""
    key = f"{label}{shots}{seed}{'' if split is None else f's{split}'}"
    trial_id = key.ljust(12, "0") if len(key) <= 12 else hashlib.sha256(key.encode()).hexdigest()[:12]
    name = f"{label}-{shots}shot-seed{seed}" + ("" if split is None else f"-split{split}")
    spec = {"label": label, "method": method or label, "shots": shots, "seed": seed, "novel_classes": [3, 4],
            **({} if split is None else {"split": split}), **({} if data is None else {"data": data})}
    result = TrialResult(trial_id, name, status, spec, metrics=metrics_from_json(metrics),
                         final_losses={"loss_g": 1.0 + seed},
                         provenance={"data_source": "embedded:test", "split_hash": f"split{shots}{seed}",
                                     "evaluator": "domain_classifier", "evaluator_test_accuracy": 0.98},
                         wall_times={"fit_s": 2.0 + seed, "total_s": 3.0}, error=error)
    trial_dir = run_dir / "trials" / f"{name}-{trial_id}"
    result.write(trial_dir)
    if status == "ok":
        save_image(torch.rand(2 * 4, 1, 8, 8), trial_dir / "samples.png", nrow=4, padding=2, pad_value=1.0)
        save_image(torch.rand(2 * 3, 1, 8, 8), trial_dir / "shots.png", nrow=3, padding=2, pad_value=1.0)


def _value(v, higher, *, reference=False, metric=None, std=None):
    """A metric value in the result.json form written before ``reference_of`` existed."""
    return {"value": v, "std": std, "higher_is_better": higher, "reference": reference, "metric": metric}


def _constructed_run(run_dir: Path, *, with_metrics: bool = True) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"suite": "constructed", "command": "harness run x.yaml",
                                                  "git_commit": "abc123", "versions": {"torch": "2.x"}}))
    (run_dir / "suite.yaml").write_text(yaml.safe_dump({"name": "constructed", "methods": [
        {"name": "zeta"}, {"name": "alpha"}], "evaluation": {"metrics": ["fid", "is", "score"]}}))
    for shots in (5, 10):
        for seed in (0, 1, 2):
            for label, offset in (("zeta", 0.0), ("alpha", 1.0)):
                metrics = {} if not with_metrics else {
                    "fid": _value(10.0 * shots / 5 + seed + offset, False, metric="fid"),
                    "fid/class_3": _value(11.0 + seed + offset, False, metric="fid"),
                    "fid_real_floor": _value(1.5 + seed, False, reference=True, metric="fid"),
                    "is": _value(1.0 + seed + offset, True, metric="is", std=0.1),
                    "is_real": _value(4.0, True, reference=True, metric="is"),
                    # a made-up name whose direction only the stored flag tells
                    "score": _value(seed + 2 * offset, False, metric="score"),
                }
                _write_trial(run_dir, label, shots, seed, metrics)
    _write_trial(run_dir, "alpha", 5, 3, {}, status="failed", error="TrialDiverged: non-finite loss at step 7")


def test_statistics_directions_reference_rows_and_failures_on_constructed_results(tmp_path):
    _constructed_run(tmp_path / "run")
    n, mean, ci = mean_ci([1.0, 2.0, 3.0])
    assert (n, mean) == (3, 2.0) and ci == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert math.isnan(mean_ci([5.0])[2])
    out = build_report(tmp_path / "run")
    readme = (out / "README.md").read_text()
    rows = _table_rows(readme, "Metrics, 5 shots")
    header = next(line for line in readme.splitlines() if line.startswith("| method | fid"))
    assert [c.strip() for c in header.strip("|").split(" | ")][1:] == ["fid ↓", "is ↑", "score ↓", "collapsed"]
    # suite order, the paired verdict, then references
    assert [r[0] for r in rows] == ["zeta", "alpha", "*best (paired)*", "*real data (reference)*"]
    zeta, alpha, best, real = rows
    # zeta's fid is lower on every seed, but 3 seeds cannot make a significant difference: no bold, "tied"
    assert zeta[1:] == ["11.0 ± 2.5", "2.0 ± 2.5", "1.0 ± 2.5", "unknown"]
    assert alpha[1:] == ["12.0 ± 2.5", "3.0 ± 2.5", "3.0 ± 2.5", "unknown"]
    assert best[1:] == ["tied", "tied", "tied", ""]
    assert real[1] == "2.5 ± 2.5" and real[2] == "4 ± 0" and real[3] == ""
    # zeta's fid at 5 shots: 10, 11, 12 → median 11, quartiles 10.5 and 11.5
    spread = _table_rows(readme, "Median [first, third quartile], 5 shots")
    assert spread[0] == ["zeta", "11 [10.5, 11.5]", "2 [1.5, 2.5]", "1 [0.5, 1.5]"] and spread[1][0] == "alpha"
    assert "Per class split" not in readme  # one partition: nothing to break down
    fid = _table_rows(readme, "fid ↓: paired differences (row − column), 5 shots")
    assert fid == [["zeta", "–", "-1 [-1, -1] p=0.25"], ["alpha", "1 [1, 1] p=0.25", "–"]]
    assert "over 3 (split, seed) pairs" in readme and "fewer than 6 pairs" in readme
    per_class = _table_rows(readme, "fid ↓ per class, 5 shots")
    assert [r[0] for r in per_class] == ["zeta", "alpha", "*best (paired)*"] and per_class[0][1] == "12.0 ± 2.5"
    assert (out / "figures" / "vs-shots.png").stat().st_size > 0  # several shots settings ran
    failed = _table_rows(readme, "Failed trials")
    assert failed == [["alpha-5shot-seed3", "alpha", "5", "3", "failed", "TrialDiverged: non-finite loss at step 7"]]
    assert "abc123" in readme and "harness run x.yaml" in readme and "embedded:test" in readme
    page = (out / "index.html").read_text()
    assert "<strong>" not in page.split("Trials")[0] and 'http' not in page.replace("http-equiv", "")
    trials = _table_rows(readme, "Trials")
    assert trials[0][-1] == "unknown" and next(r for r in trials if r[2] == "failed")[-1] == "–"


def test_a_run_scored_on_validation_classes_says_so_and_a_protocol_run_does_not(tmp_path):
    plain, validation = tmp_path / "plain", tmp_path / "validation"
    _constructed_run(plain)
    _constructed_run(validation)
    for path in validation.glob("trials/*/result.json"):
        result = json.loads(path.read_text())
        result["spec"]["selection"] = "validation"
        result["spec"]["novel_classes"] = [2]
        path.write_text(json.dumps(result))
    readme = (build_report(validation) / "README.md").read_text()
    assert "**Scored on validation classes**" in readme and "novel classes per split: [2]" in readme
    assert "Scored on validation classes" not in (build_report(plain) / "README.md").read_text()


def test_single_seed_and_zero_metric_runs_say_so(tmp_path):
    run_dir = tmp_path / "run"
    _constructed_run(run_dir, with_metrics=False)
    for path in run_dir.glob("trials/*seed[12]-*"):
        shutil.rmtree(path)
    readme = (build_report(run_dir) / "README.md").read_text()
    assert "No evaluation metrics were recorded" in readme
    assert "n = 1 seed: no confidence interval" in readme
    rows = _table_rows(readme, "Final losses and times, 5 shots")
    assert [r[0] for r in rows] == ["zeta", "alpha"] and rows[0][1] == "1"
    assert (run_dir / "report" / "figures" / "fit-time-5.png").is_file()


def test_one_seed_has_no_paired_matrix_and_no_winner(tmp_path):
    run_dir = tmp_path / "run"
    _constructed_run(run_dir)
    for path in run_dir.glob("trials/*seed[12]-*"):
        shutil.rmtree(path)
    readme = (build_report(run_dir) / "README.md").read_text()
    assert "paired differences" not in readme
    assert _table_rows(readme, "Metrics, 5 shots")[2][:4] == ["*best (paired)*", "tied", "tied", "tied"]


def test_sweep_section_shows_optuna_history_and_importances(tmp_path):
    import optuna

    run_dir = tmp_path / "run"
    _constructed_run(run_dir)
    (run_dir / "sweep").mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="constructed-alpha", direction="minimize",
                                storage=f"sqlite:///{run_dir / 'sweep' / 'optuna.db'}",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("lr", 1e-4, 1e-2, log=True) - 3e-3) ** 2 + t.suggest_int("n_c", 1, 8),
                   n_trials=12)
    out = build_report(run_dir)
    readme = (out / "README.md").read_text()
    assert "## Sweep" in readme and "constructed-alpha" in readme
    assert (out / "figures" / "sweep-optimisation-history-constructed-alpha.png").stat().st_size > 0
    assert (out / "figures" / "sweep-parameter-importances-constructed-alpha.png").stat().st_size > 0
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 4


def test_report_of_an_unknown_source_explains_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="not a run directory"):
        build_report(tmp_path / "nothing-here")


def test_directions_targets_and_reference_rows_come_from_the_registry(tmp_path):
    """Old-format results whose stored flags disagree with the registry: the registry wins (memorisation is a
    target, never bold; fid is lower-is-better whatever was stored), and the registry places the references."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    suite = {"name": "registry", "methods": [{"name": "a"}, {"name": "b"}],
             "evaluation": {"metrics": ["fid", "accuracy", "memorisation"]}}
    (run_dir / "suite.yaml").write_text(yaml.safe_dump(suite))
    for seed in (0, 1):
        for label, offset in (("a", 0.0), ("b", 1.0)):
            _write_trial(run_dir, label, 5, seed, {
                "fid": _value(10.0 + offset + seed, True, metric="fid"),  # wrong flag: the registry says ↓
                "memorisation": _value(0.5 + offset / 4 + seed / 10, True, metric="memorisation"),
                "accuracy": _value(0.6 + offset / 10, True, metric="accuracy"),
                "accuracy_real_only": _value(0.5, True, reference=True, metric="accuracy"),
                "accuracy_classic_aug": _value(0.55, True, reference=True, metric="accuracy"),
            })
    readme = (build_report(run_dir) / "README.md").read_text()
    header = next(line for line in readme.splitlines() if line.startswith("| method | fid"))
    assert [c.strip() for c in header.strip("|").split(" | ")][1:] == [
        "fid ↓", "accuracy ↑", "memorisation (≈ 1)", "collapsed"]
    a, b, best, real, classic = _table_rows(readme, "Metrics, 5 shots")
    assert a[1] == "10.5 ± 6.4" and b[1] == "11.5 ± 6.4"  # two seeds: no significant winner
    assert best[1:] == ["tied", "tied", "", ""]  # a target is not ranked: no verdict
    assert not any(cell.startswith("**") for row in (a, b) for cell in row)
    assert "memorisation (≈ 1): paired differences" not in readme  # nor compared
    assert "fid ↓: paired differences (row − column), 5 shots" in readme
    assert (real[0], real[2]) == ("*real data (reference)*", "0.5 ± 0")
    assert (classic[0], classic[2]) == ("*classic_aug (baseline)*", "0.55 ± 0")
    assert "(≈ 1) per class" not in readme  # no per-class memorisation was stored


def test_report_from_mlflow_reads_result_artifacts_and_skips_runs_without_one(tracked_run, tmp_path, caplog):
    """A child run without result.json (a trial killed before it wrote one) is left out with a warning; the other
    trials come from their artifacts, not from params and tags (here emptied of the harness's metadata)."""
    run_dir, uri, _, _ = tracked_run
    store = tmp_path / "mlflow.db"
    shutil.copy(run_dir / tr.DB_FILE, store)
    copy_uri = f"sqlite:///{store}"
    client = tr.client_for(copy_uri)
    parent = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                                f"tags.`{tr.KIND_TAG}` = 'suite'")[0]
    children = tr.child_runs(client, tr.TrackingContext(copy_uri, parent.info.experiment_id, parent.info.run_id))
    for child in children:
        for key in child.data.tags:
            if key.startswith("harness.") and key != tr.KIND_TAG:
                client.delete_tag(child.info.run_id, key)
    orphan = client.create_run(parent.info.experiment_id, tags={tr.PARENT_TAG: parent.info.run_id}, run_name="orphan")
    with caplog.at_level("WARNING", logger="harness.report.load"):
        data = load_mlflow("smoke", copy_uri)
    assert sorted(data.trials.trial_id) == sorted(load_run_dir(run_dir).trials.trial_id)
    pd.testing.assert_frame_equal(data.values, load_run_dir(run_dir).values)
    assert any(orphan.info.run_id in r.getMessage() and "result.json" in r.getMessage() for r in caplog.records)


def test_mean_ci_and_its_printed_form_against_hand_computed_values():
    """n = 4, sd = sqrt(5/3): half-width t(0.975, 3) · sd / 2 with t = 3.182446305284263 (tables)."""
    n, mean, ci = mean_ci([1.0, 2.0, 3.0, 4.0, float("nan"), None])  # missing values do not count
    assert (n, mean) == (4, 2.5) and ci == pytest.approx(3.182446305284263 * math.sqrt(5 / 3) / 2)
    assert mean_ci([]) == (0, pytest.approx(math.nan, nan_ok=True), pytest.approx(math.nan, nan_ok=True))
    assert fmt(mean, ci) == "2.5 ± 2.1"  # decimals down to the CI's second significant digit
    assert fmt(0.123456, 0.00123) == "0.1235 ± 0.0012"
    assert fmt(1505.7383) == "1506" and fmt(4.0, 0.0) == "4 ± 0" and fmt(math.nan) == "–"


def test_best_is_bold_only_when_paired_differences_over_split_and_seed_are_significant(tmp_path):
    """Two class splits × four seeds = 8 (split, seed) pairs. ``a`` has the lowest FID on every pair: bold, named
    in the best row, its matrix cells bold. On IS, ``a`` and ``b`` differ by ±0.1 alternately: tied, though their
    means differ. ``c`` misses one trial: its comparisons use the 7 pairs it shares."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "suite.yaml").write_text(yaml.safe_dump({"name": "paired", "methods": [
        {"name": "a"}, {"name": "b"}, {"name": "c"}], "evaluation": {"metrics": ["fid", "is"]}}))
    for split in (0, 1):
        for seed in range(4):
            i = 4 * split + seed
            task = 3.0 * split + 0.5 * seed  # what the split and seed contribute to every method alike
            for label, offset in (("a", 0.0), ("b", 1.0), ("c", 2.0)):
                if (label, split, seed) == ("c", 1, 3):
                    continue
                wobble = 0.1 * (-1) ** i if label == "b" else 0.0
                _write_trial(run_dir, label, 5, seed, {
                    "fid": _value(20.0 + task + offset + 0.05 * i * (label == "c"), False, metric="fid"),
                    "is": _value(2.0 + task + wobble + (label == "c"), True, metric="is"),
                    "class_consistency": _value(0.9, True, metric="class_consistency"),
                }, split=split)
    readme = (build_report(run_dir) / "README.md").read_text()
    a, b, c, best = _table_rows(readme, "Metrics, 5 shots")
    assert a[1].startswith("**") and not b[1].startswith("**") and not c[1].startswith("**")
    assert best[1:] == ["a", "c", "tied", ""]  # fid: a; is: c beats a and b, which tie; class consistency: equal
    assert [r[-1] for r in (a, b, c)] == ["0/8", "0/8", "0/7"]
    # each partition on its own, then pooled above: a's fid is 20 + 0.5·seed on split 0, 3 more on split 1
    per_split = _table_rows(readme, "Per class split, 5 shots")
    assert [r[0] for r in per_split[:2]] == ["a, split 0", "a, split 1"] and len(per_split) == 6
    assert per_split[0][1].startswith("20.8 ± ") and per_split[1][1].startswith("23.8 ± ")
    fid = _table_rows(readme, "fid ↓: paired differences (row − column), 5 shots")
    assert fid[0][0] == "a" and fid[0][2].startswith("**-1 [-1, -1] p=") and fid[0][3].startswith("**-2.")
    assert not fid[1][1].startswith("**") and fid[1][3].startswith("**")  # b beats c, not a
    assert "over 7–8 (split, seed) pairs (the pairs both methods ran)" in readme
    is_ = _table_rows(readme, "is ↑: paired differences (row − column), 5 shots")
    assert not is_[0][2].startswith("**") and not is_[1][1].startswith("**")  # a vs b: inside the noise
    assert "best: a." in readme and "best: c." in readme and "every paired difference is 0" in readme


def test_a_winner_by_one_collapsed_seed_in_three_looks_different_from_one_that_never_collapses(tmp_path):
    """``lucky`` has the lowest mean FID, bought with a seed whose generator collapsed (class consistency 0.3 with
    two novel classes: below 1.5 × chance); ``steady`` never collapses. The old rule (lowest mean) made lucky bold;
    now the table says tied, shows 1/3 collapsed beside 0/3, and marks the collapsed trial."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "suite.yaml").write_text(yaml.safe_dump({"name": "collapse", "methods": [
        {"name": "steady"}, {"name": "lucky"}], "evaluation": {"metrics": ["fid", "class_consistency"]}}))
    for seed, (fid_s, fid_l, cc_l) in enumerate([(20.0, 21.0, 0.9), (21.0, 22.0, 0.88), (22.0, 4.0, 0.3)]):
        _write_trial(run_dir, "steady", 5, seed, {"fid": _value(fid_s, False, metric="fid"),
                                                   "class_consistency": _value(0.9, True, metric="class_consistency")})
        _write_trial(run_dir, "lucky", 5, seed, {"fid": _value(fid_l, False, metric="fid"),
                                                  "class_consistency": _value(cc_l, True, metric="class_consistency")})
    readme = (build_report(run_dir) / "README.md").read_text()
    steady, lucky, best = _table_rows(readme, "Metrics, 5 shots")
    assert float(lucky[1].split()[0]) < float(steady[1].split()[0])  # the better mean
    assert not lucky[1].startswith("**") and best[1:3] == ["tied", "tied"]
    assert (steady[-1], lucky[-1]) == ("0/3", "1/3")
    assert "`class_consistency` ≤ 1.5 × chance (1 / number of novel classes)" in readme
    marks = {r[0]: r[-1] for r in _table_rows(readme, "Trials")}
    assert marks["lucky-5shot-seed2"] == "**yes**" and marks["lucky-5shot-seed0"] == "no"
    assert marks["steady-5shot-seed2"] == "no"


def test_full_data_references_are_reported_apart_and_copy_shots_is_the_bar_beside_memorisation(tmp_path):
    """Two class splits × four seeds = 8 pairs. ``good`` has a lower FID than ``copy_shots`` on every pair (by 5 and
    a bit), ``copier`` a higher one; ``dcgan-full`` (data: full) has the lowest FID of all but is a reference: its
    own row under the best row, never bold, never in the best row or the paired matrix, no copy_shots verdict."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "suite.yaml").write_text(yaml.safe_dump({"name": "references", "methods": [
        {"name": "good"}, {"name": "copier"}, {"name": "copy_shots"},
        {"name": "dcgan", "label": "dcgan-full", "data": "full"}],
        "evaluation": {"metrics": ["fid", "memorisation"]}}))
    entries = {"good": -5.0, "copier": 2.0, "copy_shots": 0.0, "dcgan-full": -15.0}
    for split in (0, 1):
        for seed in range(4):
            i = 4 * split + seed
            for label, offset in entries.items():
                full = label == "dcgan-full"
                _write_trial(run_dir, label, 5, seed, {
                    "fid": _value(30.0 + 2.0 * i + offset - 0.1 * i * (label == "good"), False, metric="fid"),
                    "memorisation": _value(0.2 if label == "copy_shots" else 0.9, None, metric="memorisation"),
                }, split=split, method="dcgan" if full else label, data="full" if full else "few")
    readme = (build_report(run_dir) / "README.md").read_text()
    rows = _table_rows(readme, "Metrics, 5 shots")
    header = next(line for line in readme.splitlines() if line.startswith("| method | fid"))
    assert [c.strip() for c in header.strip("|").split(" | ")][1:] == [
        "fid ↓", "memorisation (≈ 1)", "fid vs copy_shots", "collapsed"]
    assert [r[0] for r in rows] == ["good", "copier", "copy_shots", "*best (paired)*",
                                    "*dcgan-full (reference, full data)*"]
    good, copier, copy, best, reference = rows
    assert good[1].startswith("**") and best[1] == "good"  # the reference's lower FID does not make it best
    assert good[3].startswith("yes: -5.") and copier[3].startswith("no: 2 [2, 2]") and copy[3] == "(the baseline)"
    assert reference[1] == "22.0 ± 4.1" and reference[3:] == ["", "unknown"]  # 30 + 2 · 3.5 − 15; no verdict
    matrix = _table_rows(readme, "fid ↓: paired differences (row − column), 5 shots")
    assert [r[0] for r in matrix] == ["good", "copier", "copy_shots"]  # the reference is never compared
    assert "reproducing its training images" in readme and "(reference, full data)*: trained on every" in readme
    assert "references trained on full data (never ranked): `dcgan-full`" in readme
    samples = _table_rows(readme, "Samples, 5 shots")
    assert samples[-1][0] == "dcgan-full (reference, full data) (seed 0)"


def test_a_run_of_references_only_says_it_has_no_few_shot_methods(tmp_path):
    """A trial of a reference's settings (suites/bf16_paired_wgan_gp.yaml) has no few-shot entry: the overview says
    so instead of listing an empty "methods" before the references."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "suite.yaml").write_text(yaml.safe_dump({"name": "references", "methods": [
        {"name": "dcgan", "label": "dcgan-full", "data": "full"}], "evaluation": {"metrics": ["fid"]}}))
    for seed in range(2):
        _write_trial(run_dir, "dcgan-full", 5, seed, {"fid": _value(20.0 + seed, False, metric="fid")},
                     method="dcgan", data="full")
    overview = (build_report(run_dir) / "README.md").read_text().split("## ")[1]
    assert "no few-shot methods; references trained on full data (never ranked): `dcgan-full`" in overview
    assert "methods ;" not in overview and "methods `" not in overview


def test_planned_comparisons_test_only_the_named_pairs(tmp_path):
    """`harness compare`: a method 5 FID worse on every (split, seed) pair is worse beyond the noise; one that differs
    by ±0.1 alternately is tied; Holm corrects over the two named pairs only, not over every pair of the run."""
    from harness.report.planned import planned_comparisons

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    jitter = [0.1, -0.1, 0.05, -0.05, 0.2, -0.2, 0.1, -0.1]
    for i, (split, seed) in enumerate((s, e) for s in (0, 1) for e in range(4)):
        base = 50.0 + 7 * i
        for label, fid in (("base", base), ("worse", base + 5 + 0.01 * i), ("same", base + jitter[i]),
                           ("other", base - 30)):
            _write_trial(run_dir, label, 10, seed, {"fid": _value(fid, False, metric="fid")}, split=split)
    data = load_run_dir(run_dir)
    worse, same = planned_comparisons(data, [("base", "worse"), ("base", "same")], ["fid"])
    assert worse.difference.n == 8 and worse.difference.mean == pytest.approx(-5 - 0.01 * 3.5)
    assert worse.difference.p == pytest.approx(2 / 2**8)  # exact Wilcoxon: all 8 differences of one sign
    assert worse.difference.p_holm == pytest.approx(2 * 2 / 2**8)  # Holm over the 2 named pairs
    assert worse.verdict == "base better" and same.verdict == "tied"
    result = CliRunner().invoke(app, ["compare", str(run_dir), "--pair", "base:worse", "--pair", "base:wrose"])
    assert result.exit_code == 2 and "'wrose' is not a method label" in result.output
    result = CliRunner().invoke(app, ["compare", str(run_dir), "--pair", "base-worse"])
    assert result.exit_code == 2 and "--pair[0]" in result.output
