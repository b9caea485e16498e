"""Comparison reports: results (a run directory's JSON store, or an MLflow experiment) → pandas → Markdown + HTML.

``build_report(source)`` loads every trial into two DataFrames — ``trials`` (one row per trial: spec facts, status,
provenance) and ``values`` (long: one row per trial × value, ``kind`` = metric / final_loss / time) — the same frames
from either source, then writes into ``<run dir>/report/`` (or ``out_dir``):

* ``index.html`` — self-contained: CSS inline, every image a base64 ``data:`` URI, no network access;
* ``README.md`` — Markdown tables, images as files next to it (``figures/``, ``samples/``).

Content, per shots setting: methods × metrics as mean ± 95 % CI over seeds (Student t; n = 1 has no interval and
says so), ↑/↓ from each value's stored ``higher_is_better``, the best method bold; reference rows (values stored with
``reference: true``: real-data IS ceiling, real-vs-real FID floor, the real-only and classic-augmentation accuracy
baselines) under the methods; per-class tables; bar charts with CIs; metric vs shots when several shots ran; a sample
grid per method × novel class (seed 0, else the lowest seed); final losses and fit times; failed trials with their
errors; Optuna history and parameter importances when ``<run dir>/sweep/`` holds a study; a provenance footer.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

REPORT_DIR = "report"
TRIAL_COLUMNS = [
    "trial_id", "name", "label", "method", "shots", "seed", "status", "error", "novel_classes",
    "data_source", "split_hash", "dataset_fingerprint", "evaluator", "evaluator_hash", "evaluator_test_accuracy",
    "git_commit", "host", "params",
]
VALUE_COLUMNS = ["trial_id", "kind", "key", "value", "std", "higher_is_better", "reference", "metric"]
TIME_KEYS = ("fit_s", "sample_s", "evaluate_s", "total_s")
_PROVENANCE_KEYS = ("data_source", "split_hash", "dataset_fingerprint", "evaluator", "evaluator_hash",
                    "evaluator_test_accuracy", "git_commit", "host")
_CLASS_KEY = re.compile(r"^(?P<base>.+)/class_(?P<cls>-?\d+)$")


# ------------------------------------------------------------------------------------------------- the data


@dataclass
class ReportData:
    """Everything a report shows, independent of where it came from."""

    trials: pd.DataFrame
    values: pd.DataFrame
    suite: dict[str, Any]
    run: dict[str, Any]
    source: str
    image: Callable[[str, str], bytes | None]  # (trial_id, "samples" | "shots") -> PNG bytes
    sweep_dir: Path | None = None
    run_dir: Path | None = None  # the run directory, when it exists on this machine


def _text(value: Any) -> str | None:
    """Provenance values as the strings MLflow stores them (so both sources give identical frames)."""
    if value is None:
        return None
    from harness.tracking import NOT_APPLICABLE, _param_value

    text = _param_value(value)
    return None if text in ("", NOT_APPLICABLE) else text


# Values with a healthy target rather than a direction: never bolded as "best". The memorisation ratio is ≈ 1 when
# samples are as far from the shots as unseen real images are; ≪ 1 means copies, ≫ 1 samples unlike the data (noise).
# (Results written before the registry said so stored it as higher-is-better.)
UNRANKED_METRICS = {"memorisation": "≈ 1"}


def _unranked(key: str) -> bool:
    return key.split("/", 1)[0] in UNRANKED_METRICS


def _frames(trials: list[dict[str, Any]], values: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    t = pd.DataFrame(trials, columns=TRIAL_COLUMNS)
    t["shots"] = t["shots"].astype("int64")
    t["seed"] = t["seed"].astype("int64")
    t["evaluator_test_accuracy"] = pd.to_numeric(t["evaluator_test_accuracy"], errors="coerce").astype("float64")
    for column in TRIAL_COLUMNS:
        if column not in ("shots", "seed", "evaluator_test_accuracy"):
            t[column] = t[column].astype(object).where(t[column].notna(), None)
    t = t.sort_values(["shots", "label", "seed", "trial_id"], kind="stable").reset_index(drop=True)
    v = pd.DataFrame(values, columns=VALUE_COLUMNS)
    v["value"] = v["value"].astype("float64")
    v["std"] = v["std"].astype("float64")
    v["reference"] = v["reference"].astype(bool)
    for column in ("trial_id", "kind", "key", "higher_is_better", "metric"):
        v[column] = v[column].astype(object).where(v[column].notna(), None)
    v.loc[v.key.map(_unranked).astype(bool), "higher_is_better"] = None
    v = v.sort_values(["trial_id", "kind", "key"], kind="stable").reset_index(drop=True)
    return t, v


def _trial_record(trial_id: str, name: str, spec: dict[str, Any], status: str, error: str | None,
                  provenance: dict[str, Any], hyperparameters: dict[str, str]) -> dict[str, Any]:
    """``hyperparameters``: the method's resolved config as flat strings (MLflow's ``hp.*`` params), so both sources
    give the same record."""
    return {
        "trial_id": trial_id, "name": name, "label": spec["label"], "method": spec["method"],
        "shots": int(spec["shots"]), "seed": int(spec["seed"]), "status": status, "error": error or None,
        "novel_classes": _text(list(spec.get("novel_classes") or [])),
        **{k: _text(provenance.get(k)) for k in _PROVENANCE_KEYS},
        "params": json.dumps(hyperparameters, sort_keys=True),
    }


def load_run_dir(run_dir: Path) -> ReportData:
    """A run directory's JSON store: ``trials/*/result.json``, ``run.json``, ``suite.yaml``."""
    from harness.results import RESULT_FILE, TrialResult

    run_dir = Path(run_dir)
    trials, values, files = [], [], {}
    for path in sorted(run_dir.glob(f"trials/*/{RESULT_FILE}")):
        r = TrialResult.load(path)
        files[r.trial_id] = path.parent
        from harness.tracking import flatten

        trials.append(_trial_record(r.trial_id, r.name, r.spec, r.status, r.error, r.provenance,
                                    flatten("", r.provenance.get("method_config") or {})))
        for key, entry in r.metrics.items():
            if not isinstance(entry, dict) or entry.get("value") is None:
                continue
            values.append({"trial_id": r.trial_id, "kind": "metric", "key": key, "value": float(entry["value"]),
                           "std": None if entry.get("std") is None else float(entry["std"]),
                           "higher_is_better": entry.get("higher_is_better"),
                           "reference": bool(entry.get("reference", False)), "metric": entry.get("metric")})
        for key, v in r.final_losses.items():
            values.append({"trial_id": r.trial_id, "kind": "final_loss", "key": key, "value": float(v), "std": None,
                           "higher_is_better": None, "reference": False, "metric": None})
        for key, v in r.wall_times.items():
            if key.endswith("_s"):
                values.append({"trial_id": r.trial_id, "kind": "time", "key": key, "value": float(v), "std": None,
                               "higher_is_better": None, "reference": False, "metric": None})
    t, v = _frames(trials, values)

    def image(trial_id: str, which: str) -> bytes | None:
        directory = files.get(trial_id)
        if directory is None:
            return None
        png = directory / f"{which}.png"
        if png.is_file():
            return png.read_bytes()
        if which == "samples" and (directory / "samples.pt").is_file():
            return _grid_from_tensor(directory / "samples.pt", t.loc[t.trial_id == trial_id].iloc[0])
        return None

    return ReportData(t, v, _read_yaml(run_dir / "suite.yaml"), _read_json(run_dir / "run.json"),
                      f"run directory {run_dir.resolve()}", image,
                      run_dir / "sweep" if (run_dir / "sweep").is_dir() else None, run_dir)


def _grid_from_tensor(path: Path, trial: pd.Series, per_class: int = 8) -> bytes | None:
    """A samples.png-like grid (one row per class) from samples.pt, for trials saved without a grid."""
    import torch
    from torchvision.utils import save_image

    data = torch.load(path, map_location="cpu", weights_only=True)
    classes = json.loads(trial["novel_classes"] or "[]")
    rows = [data["images"][data["labels"] == c][:per_class] for c in classes]
    if not rows or any(len(r) == 0 for r in rows):
        return None
    n = min(len(r) for r in rows)
    buffer = io.BytesIO()
    save_image(torch.cat([r[:n] for r in rows]).float() / 255, buffer, format="png", nrow=n, padding=2,
               pad_value=1.0)
    return buffer.getvalue()


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


def load_mlflow(experiment: str, tracking_uri: str, run_id: str | None = None) -> ReportData:
    """The child runs of one parent run (default: the newest) of MLflow experiment ``experiment``."""
    from harness import tracking as tr

    client = tr.client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    if run_id is None:
        parents = client.search_runs([exp.experiment_id], f"tags.`{tr.KIND_TAG}` = 'suite'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
        if not parents:
            raise ValueError(f"MLflow experiment {experiment!r} has no harness parent run")
        run_id = parents[0].info.run_id
    parent = client.get_run(run_id)
    context = tr.TrackingContext(tracking_uri, exp.experiment_id, run_id)
    children = tr.child_runs(client, context)
    trials, values, run_ids = [], [], {}
    for child in children:
        params, tags, metrics = child.data.params, child.data.tags, child.data.metrics
        trial_id = tags.get(tr.TRIAL_ID_TAG) or params.get("trial_id")
        if trial_id in run_ids:  # a trial has one child run; never count one twice
            continue
        run_ids[trial_id] = child.info.run_id
        spec = {"label": params.get("label"), "method": params.get("method"), "shots": params.get("shots"),
                "seed": params.get("seed"),
                "novel_classes": json.loads(params["novel_classes"]) if params.get("novel_classes") else []}
        provenance = {k: params.get(k) for k in tr.SPLIT_PARAMS}
        provenance.update({k: tags.get(f"harness.{k}") for k in _PROVENANCE_KEYS if k not in tr.SPLIT_PARAMS})
        hyperparameters = {k[len("hp."):]: v for k, v in params.items()  # "n/a": a key another method has
                           if k.startswith("hp.") and v != tr.NOT_APPLICABLE}
        trials.append(_trial_record(trial_id, child.info.run_name, spec, tags.get(tr.STATUS_TAG, "running"),
                                    tags.get(tr.ERROR_TAG) or None, provenance, hyperparameters))
        meta = tr.read_meta(tags)
        for key, (higher, reference, metric, has_std) in meta.get("metrics", {}).items():
            name = tr.mlflow_key(key)
            if name not in metrics:
                continue
            values.append({"trial_id": trial_id, "kind": "metric", "key": key, "value": float(metrics[name]),
                           "std": float(metrics[name + "_std"]) if has_std and name + "_std" in metrics else None,
                           "higher_is_better": higher, "reference": bool(reference), "metric": metric})
        for kind, prefix, keys in (("final_loss", "final/", meta.get("final_losses", [])),
                                   ("time", "time/", meta.get("wall_times", []))):
            for key in keys:
                name = tr.mlflow_key(prefix + key)
                if name in metrics:
                    values.append({"trial_id": trial_id, "kind": kind, "key": key, "value": float(metrics[name]),
                                   "std": None, "higher_is_better": None, "reference": False, "metric": None})
    t, v = _frames(trials, values)

    def download(artifact: str, run: str) -> bytes | None:
        import os

        quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
        if quiet:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        try:
            with tempfile.TemporaryDirectory(prefix="harness-report-") as tmp:
                return Path(client.download_artifacts(run, artifact, tmp)).read_bytes()
        except Exception:  # noqa: BLE001 - a missing artifact is shown as missing
            return None
        finally:
            if quiet:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)

    def image(trial_id: str, which: str) -> bytes | None:
        run = run_ids.get(trial_id)
        return download(f"{which}.png", run) if run else None

    suite_text, run_text = download("suite/suite.yaml", run_id), download("suite/run.json", run_id)
    suite = (yaml.safe_load(suite_text) or {}) if suite_text else {}
    run = json.loads(run_text) if run_text else {
        "suite": experiment, "suite_hash": parent.data.tags.get("harness.suite_hash"),
        "command": parent.data.tags.get("harness.command"), "git_commit": parent.data.tags.get("harness.git_commit"),
        "versions": {k[len("version."):]: v for k, v in parent.data.tags.items() if k.startswith("version.")},
    }
    recorded = parent.data.tags.get("harness.run_dir")
    run_dir = Path(recorded) if recorded and Path(recorded).is_dir() else None
    sweep = run_dir / "sweep" if run_dir is not None and (run_dir / "sweep").is_dir() else None
    return ReportData(t, v, suite, run, f"MLflow experiment {experiment!r}, parent run {run_id} at {tracking_uri}",
                      image, sweep, run_dir)


# -------------------------------------------------------------------------------------------------- statistics


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[int, float, float]:
    """(n, mean, half-width of the ``confidence`` CI from Student's t); half-width NaN when n < 2."""
    xs = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    n = len(xs)
    if n == 0:
        return 0, math.nan, math.nan
    mean = sum(xs) / n
    if n < 2:
        return n, mean, math.nan
    from scipy import stats

    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return n, mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)


def fmt(mean: float, ci: float = math.nan) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    if math.isnan(ci):
        return f"{mean:.4g}"
    if ci == 0:
        return f"{mean:.4g} ± 0"
    decimals = min(6, max(0, 1 - math.floor(math.log10(abs(ci)))))
    return f"{mean:.{decimals}f} ± {ci:.{decimals}f}"


# ------------------------------------------------------------------------------------------------- the model


@dataclass
class Cell:
    text: str
    bold: bool = False
    title: str | None = None


@dataclass
class Row:
    label: str
    cells: list[Cell]
    kind: str = "method"  # method / reference


@dataclass
class Table:
    id: str
    title: str
    columns: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    collapsed: bool = False
    align: str = "right"  # of the value columns


@dataclass
class Figure:
    id: str
    title: str
    png: bytes
    caption: str = ""


@dataclass
class ImageGrid:
    id: str
    title: str
    columns: list[str]
    rows: list[tuple[str, list[tuple[str, bytes | None]]]]  # (row label, [(file name, png)])
    notes: list[str] = field(default_factory=list)


@dataclass
class Text:
    text: str


@dataclass
class Section:
    title: str
    blocks: list[Any]
    level: int = 2


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower()


def _arrow(higher: bool | None, key: str = "") -> str:
    if key and _unranked(key):
        return f" ({UNRANKED_METRICS[key.split('/', 1)[0]]})"
    if higher is None or (isinstance(higher, float) and math.isnan(higher)):
        return ""
    return " ↑" if bool(higher) else " ↓"


class Report:
    """Turns :class:`ReportData` into sections of tables, figures and image grids."""

    def __init__(self, data: ReportData) -> None:
        self.data = data
        trials = data.trials.copy()
        # several trials of one method at the same shots and seed (a sweep's samples) are rows of their own
        clash = trials.duplicated(["label", "shots", "seed"], keep=False)
        trials["base_label"] = trials["label"]
        trials.loc[clash, "label"] = _distinguishing_labels(trials[clash])
        self.trials = trials
        self.ok = trials[trials.status == "ok"]
        self.values = data.values.merge(trials[["trial_id", "label", "shots", "seed", "status"]], on="trial_id")
        self.values = self.values[self.values.status == "ok"]
        suite_methods = [m.get("label") or m.get("name") for m in self.data.suite.get("methods", [])]
        rank = {m: i for i, m in enumerate(suite_methods)}
        pairs = trials.drop_duplicates("label")[["label", "base_label"]].itertuples(index=False)
        self.labels = [label for label, base in sorted(pairs, key=lambda p: (rank.get(p[1], len(rank)), p[1], p[0]))]
        self.shots = sorted(self.trials.shots.unique().tolist())
        order = self.data.suite.get("evaluation", {}).get("metrics", []) or []
        self.metric_order = {name: i for i, name in enumerate(order)}

    # -- helpers
    def _stats(self, frame: pd.DataFrame, per_seed: bool = False) -> tuple[int, float, float]:
        if per_seed:  # reference values depend on the split (seed), not the method: one per seed
            frame = frame.groupby("seed", as_index=False)["value"].first()
        return mean_ci(frame["value"].tolist())

    def _metric_keys(self) -> pd.DataFrame:
        """One row per metric key: pooled?, base key, class, direction, reference, registry metric."""
        m = self.values[self.values.kind == "metric"]
        rows = []
        for key, group in m.groupby("key", sort=False):
            match = _CLASS_KEY.match(key)
            directions = {h for h in group.higher_is_better if h is not None}
            rows.append({"key": key, "base": match["base"] if match else key,
                         "class": int(match["cls"]) if match else None,
                         "higher_is_better": directions.pop() if len(directions) == 1 else None,
                         "reference": bool(group.reference.any()), "metric": group.metric.dropna().iloc[0]
                         if group.metric.notna().any() else key})
        frame = pd.DataFrame(rows, columns=["key", "base", "class", "higher_is_better", "reference", "metric"])
        if frame.empty:
            return frame
        frame["order"] = [self.metric_order.get(m, len(self.metric_order)) for m in frame.metric]
        return frame.sort_values(["order", "base", "key"], kind="stable").reset_index(drop=True)

    def _layout(self, keys: pd.DataFrame) -> tuple[list[str], dict[str, tuple[str, str]]]:
        """Columns (generator-metric keys) and, for each reference key, (column, reference row)."""
        pooled = keys[keys["class"].isna()]
        columns = pooled[~pooled.reference].key.tolist()
        placement: dict[str, tuple[str, str]] = {}
        taken: set[tuple[str, str]] = set()
        for ref in pooled[pooled.reference].itertuples():
            same = [c for c in columns if ref.key.startswith(c + "_")]
            same_metric = [c for c in columns if keys.loc[keys.key == c, "metric"].iloc[0] == ref.metric]
            column = max(same, key=len) if same else (same_metric[0] if len(same_metric) == 1 else None)
            suffix = ref.key[len(column) + 1:] if column and ref.key.startswith(column + "_") else ref.key
            row = "real data (reference)" if suffix.startswith("real") else f"{suffix} (baseline)"
            if column is None or (column, row) in taken:
                column = ref.key
                columns.append(column)
                row = "reference"
            taken.add((column, row))
            placement[ref.key] = (column, row)
        return columns, placement

    def _table(self, tid: str, title: str, shots: int, columns: list[tuple[str, str, bool | None]],
               kind: str, refs: dict[str, tuple[str, str]] | None = None) -> Table | None:
        """Rows = methods (+ reference rows); ``columns`` = (value key, header, higher_is_better)."""
        v = self.values[(self.values.shots == shots) & (self.values.kind == kind)]
        if v.empty or not columns:
            return None
        rows, single = [], False
        stats: dict[tuple[str, str], tuple[int, float, float]] = {}
        for label in self.labels:
            for key, _, _ in columns:
                frame = v[(v.label == label) & (v.key == key) & ~v.reference]
                if not frame.empty:
                    stats[label, key] = self._stats(frame)
        best: dict[str, float] = {}
        for key, _, higher in columns:
            means = [stats[label, key][1] for label in self.labels if (label, key) in stats]
            means = [m for m in means if not math.isnan(m)]
            if higher is not None and len(means) > 1:
                best[key] = max(means) if higher else min(means)
        for label in self.labels:
            if not any((label, key) in stats for key, _, _ in columns):
                continue
            cells = []
            for key, _, _ in columns:
                n, mean, ci = stats.get((label, key), (0, math.nan, math.nan))
                single |= n == 1
                cells.append(Cell(fmt(mean, ci), bold=key in best and mean == best[key],
                                  title=f"{key}: n={n}" if n else None))
            rows.append(Row(label, cells))
        ref_rows: dict[str, dict[str, Cell]] = {}
        for ref_key, (column, row_name) in (refs or {}).items():
            frame = v[(v.key == ref_key) & v.reference]
            if frame.empty:
                continue
            n, mean, ci = self._stats(frame, per_seed=True)
            single |= n == 1
            ref_rows.setdefault(row_name, {})[column] = Cell(fmt(mean, ci), title=f"{ref_key}: n={n} seeds")
        for row_name, cells in sorted(ref_rows.items(), key=lambda item: (not item[0].startswith("real"), item[0])):
            rows.append(Row(row_name, [cells.get(key, Cell("")) for key, _, _ in columns], kind="reference"))
        if not rows:
            return None
        notes = ["mean ± 95 % confidence interval over seeds (Student t); **bold** = best method "
                 "(↑ higher is better, ↓ lower is better)."]
        if single:
            notes.append("n = 1 seed: no confidence interval (a single value is shown).")
        if ref_rows:
            used = sorted(k for k, (_, r) in (refs or {}).items() if r in ref_rows)
            notes.append("reference rows describe real data or a baseline, not a generator: " + ", ".join(
                f"`{k}` in column `{refs[k][0]}`" for k in used) + ".")
        return Table(tid, title, ["method", *[h for _, h, _ in columns]], rows, notes)

    # -- sections
    def sections(self) -> list[Section]:
        keys = self._metric_keys()
        out = [self._overview(keys)]
        for shots in self.shots:
            out.append(self._shots_section(shots, keys))
        if len(self.shots) > 1 and not keys.empty:
            figure = self._vs_shots_figure(keys)
            if figure is not None:
                out.append(Section("Metrics vs shots", [figure]))
        failed = self._failed()
        if failed is not None:
            out.append(Section("Failed trials", [failed]))
        out.append(Section("Trials", [self._trials_table()]))
        sweep = self._sweep_section()
        if sweep is not None:
            out.append(sweep)
        out.append(self._provenance())
        return out

    def _overview(self, keys: pd.DataFrame) -> Section:
        t = self.trials
        n_ok, n_stopped = int((t.status == "ok").sum()), int((t.status == "stopped").sum())
        n_failed = len(t) - n_ok - n_stopped
        stopped = f"{n_stopped} stopped early by the sweep's scheduler, " if n_stopped else ""
        seeds = sorted(t.seed.unique().tolist())
        lines = [f"{len(t)} trials ({n_ok} ok, {stopped}{n_failed} failed or unfinished): methods "
                 f"{', '.join(f'`{m}`' for m in self.labels)}; shots {', '.join(map(str, self.shots))}; "
                 f"seeds {', '.join(map(str, seeds))}."]
        if keys.empty:
            lines.append("No evaluation metrics were recorded (the suite's `evaluation.metrics` is empty): the "
                         "tables show final losses and fit times only.")
        return Section("Overview", [Text(" ".join(lines))])

    def _shots_section(self, shots: int, keys: pd.DataFrame) -> Section:
        blocks: list[Any] = []
        if not keys.empty:
            columns, refs = self._layout(keys)
            directions = dict(zip(keys.key, keys.higher_is_better, strict=True))
            cols = [(c, f"{c}{_arrow(directions.get(c), c)}", directions.get(c)) for c in columns]
            table = self._table(f"metrics-{shots}", f"Metrics, {shots} shots", shots, cols, "metric", refs)
            if table is not None:
                blocks.append(table)
            figure = self._bar_figure(shots, columns, refs, directions)
            if figure is not None:
                blocks.append(figure)
            blocks += self._per_class_tables(shots, keys)
        training = self._training_table(shots)
        if training is not None:
            blocks.append(training)
        if keys.empty:
            figure = self._time_figure(shots)
            if figure is not None:
                blocks.append(figure)
        grid = self._sample_grid(shots)
        if grid is not None:
            blocks.append(grid)
        return Section(f"{shots} shots", blocks)

    def _per_class_tables(self, shots: int, keys: pd.DataFrame) -> list[Table]:
        """One table per per-class metric (rows: methods, columns: novel classes), with the per-class reference
        values of the same metric (e.g. ``fid_real_floor/class_c`` under ``fid/class_c``) as reference rows."""
        tables = []
        per_class = keys[keys["class"].notna()]
        ref_bases = per_class[per_class.reference].groupby("base", sort=False)
        for base, group in per_class[~per_class.reference].groupby("base", sort=False):
            group = group.sort_values("class")
            higher = group.higher_is_better.iloc[0]
            cols = [(k, f"class {int(c)}", higher) for k, c in zip(group.key, group["class"], strict=True)]
            by_class = {int(c): k for k, c in zip(group.key, group["class"], strict=True)}
            refs: dict[str, tuple[str, str]] = {}
            for ref_base, ref_group in ref_bases:
                if not ref_base.startswith(base + "_"):
                    continue
                suffix = ref_base[len(base) + 1:]
                row = "real data (reference)" if suffix.startswith("real") else f"{suffix} (baseline)"
                for k, c in zip(ref_group.key, ref_group["class"], strict=True):
                    if int(c) in by_class:
                        refs[k] = (by_class[int(c)], row)
            table = self._table(f"per-class-{_slug(base)}-{shots}",
                                f"{base}{_arrow(higher, base)} per class, {shots} shots",
                                shots, cols, "metric", refs)
            if table is not None:
                table.collapsed = True
                tables.append(table)
        return tables

    def _training_table(self, shots: int) -> Table | None:
        v = self.values[(self.values.shots == shots)]
        losses = sorted(v[v.kind == "final_loss"].key.unique().tolist())
        times = [k for k in TIME_KEYS if k in set(v[v.kind == "time"].key)]
        if not losses and not times:
            return None
        loss_table = self._table(f"training-{shots}", f"Final losses and times, {shots} shots", shots,
                                 [(k, f"final {k}", None) for k in losses], "final_loss")
        time_table = self._table(f"times-{shots}", "", shots, [(k, k, None) for k in times], "time")
        if loss_table is None:
            loss_table, time_table = time_table, None
            if loss_table is None:
                return None
            loss_table.title = f"Final losses and times, {shots} shots"
        if time_table is not None:  # join the two tables' columns row by row
            by_label = {r.label: r.cells for r in time_table.rows}
            loss_table.columns += time_table.columns[1:]
            for row in loss_table.rows:
                row.cells += by_label.get(row.label, [Cell("–") for _ in times])
        single = [n for t in (loss_table, time_table) if t is not None for n in t.notes if n.startswith("n = 1")]
        loss_table.notes = ["mean ± 95 % CI over seeds; final losses are the last logged value of each fitted model "
                            "(averaged over the per-class models of unconditional methods); times in seconds.",
                            *single[:1]]
        return loss_table

    def _failed(self) -> Table | None:
        failed = self.trials[~self.trials.status.isin(["ok", "stopped"])]  # stopped trials: in the sweep section
        if failed.empty:
            return None
        rows = [Row(r.name, [Cell(r.label), Cell(str(r.shots)), Cell(str(r.seed)), Cell(r.status),
                             Cell((r.error or "").splitlines()[0][:300] if r.error else "")])
                for r in failed.itertuples()]
        return Table("failed", "Failed trials", ["trial", "method", "shots", "seed", "status", "error"], rows,
                     align="left")

    def _trials_table(self) -> Table:
        v = self.data.values  # failed trials too
        rows = []
        for r in self.data.trials.itertuples():
            fit = v[(v.trial_id == r.trial_id) & (v.kind == "time") & (v.key == "fit_s")]
            rows.append(Row(r.name, [Cell(r.trial_id), Cell(r.status), Cell(fmt(fit.value.iloc[0]) if len(fit) else "–"),
                                     Cell((r.split_hash or "–")[:12])], kind="trial"))
        table = Table("trials", "Trials", ["trial", "id", "status", "fit s", "split"], rows, align="left")
        table.collapsed = True
        return table

    # -- figures
    def _bar_figure(self, shots: int, columns: list[str], refs: dict[str, tuple[str, str]],
                    directions: dict[str, bool | None]) -> Figure | None:
        v = self.values[(self.values.shots == shots) & (self.values.kind == "metric")]
        if v.empty or not columns:
            return None
        fig, axes = _subplots(len(columns))
        for ax, column in zip(axes, columns, strict=False):
            labels, means, cis = [], [], []
            for label in self.labels:
                frame = v[(v.label == label) & (v.key == column) & ~v.reference]
                if frame.empty:
                    continue
                n, mean, ci = self._stats(frame)
                labels.append(label)
                means.append(mean)
                cis.append(0 if math.isnan(ci) else ci)
            if labels:
                ax.bar(range(len(labels)), means, yerr=cis, capsize=4, color="#4c72b0")
                ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
            for i, (ref_key, (ref_column, _)) in enumerate(sorted(refs.items())):
                frame = v[(v.key == ref_key) & v.reference]
                if ref_column != column or frame.empty:
                    continue
                _, mean, _ = self._stats(frame, per_seed=True)
                ax.axhline(mean, linestyle="--", color=f"C{i + 1}", label=ref_key)
                ax.legend(fontsize=7)
            ax.set_title(f"{column}{_arrow(directions.get(column))}", fontsize=9)
        return Figure(f"bars-{shots}", f"Metrics, {shots} shots", _png(fig),
                      "bars: mean over seeds, whiskers: 95 % CI; dashed: reference values (real data, baselines)")

    def _time_figure(self, shots: int) -> Figure | None:
        v = self.values[(self.values.shots == shots) & (self.values.kind == "time") & (self.values.key == "fit_s")]
        if v.empty:
            return None
        fig, (ax,) = _subplots(1)
        labels = [label for label in self.labels if not v[v.label == label].empty]
        stats = [self._stats(v[v.label == label]) for label in labels]
        ax.bar(range(len(labels)), [s[1] for s in stats], yerr=[0 if math.isnan(s[2]) else s[2] for s in stats],
               capsize=4, color="#55a868")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title("fit time (s)", fontsize=9)
        return Figure(f"fit-time-{shots}", f"Fit time, {shots} shots", _png(fig), "mean over seeds, whiskers: 95 % CI")

    def _vs_shots_figure(self, keys: pd.DataFrame) -> Figure | None:
        columns, refs = self._layout(keys)
        v = self.values[self.values.kind == "metric"]
        directions = dict(zip(keys.key, keys.higher_is_better, strict=True))
        fig, axes = _subplots(len(columns))
        for ax, column in zip(axes, columns, strict=False):
            for i, label in enumerate(self.labels):
                points = [(s, *self._stats(v[(v.shots == s) & (v.label == label) & (v.key == column) & ~v.reference]))
                          for s in self.shots]
                points = [p for p in points if p[1] > 0]
                if points:
                    ax.errorbar([p[0] for p in points], [p[2] for p in points],
                                yerr=[0 if math.isnan(p[3]) else p[3] for p in points], marker="o", capsize=3,
                                label=label, color=f"C{i}")
            for ref_key, (ref_column, _) in refs.items():
                if ref_column != column:
                    continue
                points = [(s, self._stats(v[(v.shots == s) & (v.key == ref_key) & v.reference], per_seed=True))
                          for s in self.shots]
                points = [(s, st[1]) for s, st in points if st[0] > 0]
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], "--", color="gray", label=ref_key)
            ax.set_xscale("log")
            ax.set_xticks(self.shots, [str(s) for s in self.shots])
            ax.set_xticks([], minor=True)
            ax.set_xlabel("shots", fontsize=8)
            ax.set_title(f"{column}{_arrow(directions.get(column))}", fontsize=9)
            ax.legend(fontsize=7)
        return Figure("vs-shots", "Metrics vs shots", _png(fig), "mean over seeds, whiskers: 95 % CI")

    def _sample_grid(self, shots: int) -> ImageGrid | None:
        ok = self.ok[self.ok.shots == shots]
        rows: list[tuple[str, list[tuple[str, bytes | None]]]] = []
        columns: list[str] = []
        notes = []
        shots_row = None
        for label in self.labels:
            trials = ok[ok.label == label].sort_values("seed")
            if trials.empty:
                continue
            trial = trials.iloc[0]
            classes = json.loads(trial.novel_classes or "[]")
            png = self.data.image(trial.trial_id, "samples")
            if png is None or not classes:
                continue
            columns = columns or [f"class {c}" for c in classes]
            crops = _split_rows(png, len(classes))
            rows.append((f"{label} (seed {trial.seed})",
                         [(f"samples/{shots}shot-{_slug(label)}-class{c}.png", crop)
                          for c, crop in zip(classes, crops, strict=True)]))
            if shots_row is None:
                real = self.data.image(trial.trial_id, "shots")
                if real is not None:
                    shots_row = (f"real shots (seed {trial.seed})",
                                 [(f"samples/{shots}shot-real-seed{trial.seed}-class{c}.png", crop)
                                  for c, crop in zip(classes, _split_rows(real, len(classes)), strict=True)])
        if not rows:
            return None
        if shots_row is not None:
            rows.insert(0, shots_row)
            notes.append("first row: the real shots a method was given (first images of each class).")
        notes.append("samples of each novel class from each method's lowest-seed trial.")
        return ImageGrid(f"samples-{shots}", f"Samples, {shots} shots", ["", *columns], rows, notes)

    # -- sweeps
    def _sweep_section(self) -> Section | None:
        directory = self.data.sweep_dir
        if directory is None:
            return None
        blocks: list[Any] = []
        for storage_name, storage in _optuna_storages(directory):
            import optuna

            try:
                names = optuna.get_all_study_names(storage)
            except Exception as exc:  # noqa: BLE001 - a broken storage is reported, not fatal
                blocks.append(Text(f"could not read the Optuna storage {storage_name}: {exc}"))
                continue
            for name in names:
                blocks += _study_blocks(optuna.load_study(study_name=name, storage=storage), name)
        return Section("Sweep", blocks) if blocks else None

    # -- provenance
    def _provenance(self) -> Section:
        t, run = self.trials, self.data.run
        rows = []

        def unique(column: str) -> str:
            values = sorted({str(x) for x in t[column].dropna()})
            return ", ".join(f"`{x}`" for x in values) if values else "–"

        rows.append(Row("data source", [Cell(unique("data_source"))]))
        rows.append(Row("dataset fingerprint", [Cell(unique("dataset_fingerprint"))]))
        splits = t.dropna(subset=["split_hash"]).drop_duplicates(["shots", "seed"])
        rows.append(Row("split hashes", [Cell("; ".join(f"{r.shots} shots seed {r.seed}: `{r.split_hash[:16]}`"
                                                        for r in splits.itertuples()) or "–")]))
        evaluators = t.dropna(subset=["evaluator"]).drop_duplicates(["evaluator", "evaluator_hash"])
        rows.append(Row("evaluator", [Cell("; ".join(
            f"`{r.evaluator}` (hash `{(r.evaluator_hash or '–')[:16]}`, test accuracy "
            f"{'–' if pd.isna(r.evaluator_test_accuracy) else f'{r.evaluator_test_accuracy:.4f}'})"
            for r in evaluators.itertuples()) or "none (no metrics needing one)")]))
        rows.append(Row("suite", [Cell(f"`{run.get('suite', self.data.suite.get('name', '–'))}` version "
                                       f"{run.get('suite_version', self.data.suite.get('version', '–'))}, hash "
                                       f"`{run.get('suite_hash', '–')}`, file `{run.get('suite_file', '–')}`")]))
        rows.append(Row("git commit", [Cell(f"`{run.get('git_commit') or unique('git_commit')}`")]))
        versions = run.get("versions") or {}
        rows.append(Row("versions", [Cell(", ".join(f"{k} {v}" for k, v in versions.items()) or "–")]))
        rows.append(Row("command", [Cell(f"`{run.get('command', '–')}`")]))
        rows.append(Row("started", [Cell(str(run.get("started", "–")))]))
        rows.append(Row("hosts", [Cell(unique("host"))]))
        return Section("Provenance", [Table("provenance", "Provenance", ["", ""], rows, align="left")])


def _distinguishing_labels(trials: pd.DataFrame) -> list[str]:
    """Labels for trials sharing method label, shots and seed (a sweep's samples): the parameters that differ between
    them (``metacgan (lr_d=1.1e-04, lr_g=3.8e-04, n_c=4)``), else the trial id."""
    params = [json.loads(p) if isinstance(p, str) and p else {} for p in trials["params"]]
    keys = sorted({k for p in params for k in p})
    differing = [k for k in keys if len({json.dumps(p.get(k)) for p in params}) > 1]

    def show(v: Any) -> str:
        try:
            number = float(v)
        except (TypeError, ValueError):
            return str(v)
        return str(v) if number.is_integer() else f"{number:.2g}"

    labels = []
    for (label, trial_id), p in zip(trials[["label", "trial_id"]].itertuples(index=False), params, strict=True):
        shown = ", ".join(f"{k}={show(p[k])}" for k in differing if k in p)
        labels.append(f"{label} ({shown})" if shown else f"{label} ({trial_id[:8]})")
    if len(set(labels)) < len(labels):  # rounding made two equal: fall back to ids
        labels = [f"{label} ({trial_id[:8]})"
                  for label, trial_id in trials[["label", "trial_id"]].itertuples(index=False)]
    return labels


def _subplots(n: int):
    from matplotlib.figure import Figure as MplFigure

    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = MplFigure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _split_rows(png: bytes, n: int) -> list[bytes]:
    """The ``n`` class rows of a torchvision grid (padding 2): one PNG per row."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        image.load()
        width, height = image.size
        row_h = (height - 2) / n
        crops = []
        for i in range(n):
            top = round(i * row_h)
            crop = image.crop((0, top, width, min(height, round((i + 1) * row_h) + 2)))
            buffer = io.BytesIO()
            crop.save(buffer, format="png")
            crops.append(buffer.getvalue())
    return crops


def _optuna_storages(directory: Path) -> list[tuple[str, Any]]:
    out = []
    for path in sorted(directory.rglob("*")):
        if path.suffix in (".db", ".sqlite", ".sqlite3"):
            out.append((path.name, f"sqlite:///{path.resolve()}"))
        elif path.suffix in (".log", ".journal") or path.name.endswith(".jsonl"):
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            out.append((path.name, JournalStorage(JournalFileBackend(str(path)))))
    return out


def _param_cell(value: Any) -> Cell:
    return Cell(fmt(value) if isinstance(value, float) else str(value))


def _study_blocks(study, name: str) -> list[Any]:
    import optuna
    from optuna.visualization import matplotlib as ov

    blocks: list[Any] = []
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    direction = "max" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "min"
    if complete:
        best = study.best_trial
        rows = [Row(k, [_param_cell(v)]) for k, v in best.params.items()]
        rows.append(Row(f"objective ({direction})", [Cell(fmt(best.value), bold=True)]))
        blocks.append(Table(f"sweep-best-{_slug(name)}", f"Study `{name}`: best of {len(complete)} complete trials "
                            f"({len(study.trials)} in all)", ["parameter", "value"], rows))
        ranked = sorted(complete, key=lambda t: t.value, reverse=direction == "max")
        names = list(best.params)
        all_rows = [Row(str(t.number), [_param_cell(t.params.get(k, "–")) for k in names]
                        + [Cell(fmt(t.value), bold=t.number == best.number)]) for t in ranked]
        table = Table(f"sweep-all-{_slug(name)}", f"Study `{name}`: every complete trial, best first",
                      ["trial", *names, f"objective ({direction})"], all_rows)
        table.collapsed = True
        blocks.append(table)
    else:
        blocks.append(Text(f"Study `{name}`: no complete trial yet ({len(study.trials)} in all)."))
        return blocks
    if pruned:
        blocks.append(_pruned_table(pruned, names, name, direction))
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plots = [("optimisation history", ov.plot_optimization_history),
                 ("parameter importances", ov.plot_param_importances)]
        intermediate = [v for t in study.trials for v in t.intermediate_values.values()]
        if intermediate:
            plots.append(("intermediate values", ov.plot_intermediate_values))
        for title, plot in plots:
            try:
                ax = plot(study)
            except Exception as exc:  # noqa: BLE001 - e.g. too few trials for importances
                blocks.append(Text(f"{title}: not available ({exc})."))
                continue
            if plot is ov.plot_intermediate_values and min(intermediate) > 0:
                ax.set_yscale("log")  # early values of a GAN metric span orders of magnitude
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(7, 3.5)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
            plt.close(fig)
            blocks.append(Figure(f"sweep-{_slug(title)}-{_slug(name)}", f"{name}: {title}", buffer.getvalue()))
    return blocks


def _pruned_table(pruned: list, names: list[str], study_name: str, direction: str) -> Table:
    """Trials the sweep's scheduler stopped early: how far they got and their last intermediate value (not comparable
    with complete trials' final values, measured after the whole budget)."""
    sign = -1 if direction == "max" else 1
    reached = []  # (trial, last step, value there)
    for trial in pruned:
        step = max(trial.intermediate_values, default=0)
        reached.append((trial, step, trial.intermediate_values.get(step, float("nan"))))
    reached.sort(key=lambda r: (-r[1], sign * r[2]))
    rows = [Row(str(t.number), [_param_cell(t.params.get(k, "–")) for k in names]
                + [Cell(str(step)), Cell(fmt(value))]) for t, step, value in reached]
    table = Table(f"sweep-pruned-{_slug(study_name)}", f"Study `{study_name}`: {len(pruned)} trials stopped early "
                  "(pruned), furthest first", ["trial", *names, "steps reached", f"last value ({direction})"], rows)
    table.notes = ["last values were measured after fewer steps than the complete trials' objectives: not comparable."]
    table.collapsed = True
    return table


# -------------------------------------------------------------------------------------------------- rendering


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, sections: list[Section], source: str, out_dir: Path) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"{'#' * section.level} {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                lines += [block.text, ""]
            elif isinstance(block, Table):
                if block.title and block.title != section.title:
                    lines += [f"**{block.title}**", ""]
                header = [_md_cell(c) or " " for c in block.columns]
                lines.append("| " + " | ".join(header) + " |")
                align = "--:" if block.align == "right" else "---"
                lines.append("|" + "|".join(["---"] + [align] * (len(header) - 1)) + "|")
                for row in block.rows:
                    label = f"*{row.label}*" if row.kind == "reference" else row.label
                    cells = [f"**{_md_cell(c.text)}**" if c.bold and c.text else _md_cell(c.text) for c in row.cells]
                    lines.append("| " + " | ".join([_md_cell(label), *cells]) + " |")
                lines.append("")
                if block.notes:
                    lines += [*(f"{note}  " for note in block.notes), ""]
            elif isinstance(block, Figure):
                path = out_dir / "figures" / f"{block.id}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(block.png)
                lines += [f"![{block.title}](figures/{block.id}.png)", ""]
                if block.caption:
                    lines += [f"*{block.caption}*", ""]
            elif isinstance(block, ImageGrid):
                lines += [f"**{block.title}**", ""]
                lines.append("| " + " | ".join(c or "method" for c in block.columns) + " |")
                lines.append("|" + "|".join(["---"] * len(block.columns)) + "|")
                for label, images in block.rows:
                    cells = []
                    for column, (name, png) in zip(block.columns[1:], images, strict=False):
                        if png is None:
                            cells.append("–")
                            continue
                        path = out_dir / name
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_bytes(png)
                        cells.append(f"![{label}, {column}]({name})")
                    lines.append("| " + " | ".join([_md_cell(label), *cells]) + " |")
                lines.append("")
                lines += [f"{note}  " for note in block.notes]
                lines.append("")
    lines += ["---", "", f"Source: {source}", ""]
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1150px;color:#222;
padding:0 1em;line-height:1.45}
h1{border-bottom:2px solid #4c72b0;padding-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:right;vertical-align:middle;white-space:nowrap}table.left td,table.left th{text-align:left;white-space:normal}th{background:#eef2f8}td.label,th.label{text-align:left;white-space:nowrap}
tr.reference td{background:#f7f7f7;font-style:italic}tr.trial td{font-family:monospace}
p.note{font-size:.85em;color:#555;margin:.2em 0}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
figure img{max-width:100%;border:1px solid #eee}img.sample{image-rendering:pixelated;height:auto;width:auto;
min-height:40px;transform-origin:left top}td.img{text-align:center;background:#fff}table.samples th{text-align:center}
nav{font-size:.9em;background:#f5f7fa;padding:.6em 1em;border-radius:4px}nav a{margin-right:1em}
footer{font-size:.8em;color:#666;margin-top:3em;border-top:1px solid #ddd;padding-top:.5em}
details summary{cursor:pointer;font-weight:600;margin:.6em 0}code{background:#f3f3f3;padding:0 .2em}
"""

_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{{ title|e }}</title><style>{{ css }}</style></head>
<body>
<h1>{{ title|e }}</h1>
<nav>{% for s in sections %}<a href="#{{ s.anchor }}">{{ s.title|e }}</a>{% endfor %}</nav>
{% for s in sections %}
<section id="{{ s.anchor }}"><h2>{{ s.title|e }}</h2>
{% for b in s.blocks %}{{ b }}
{% endfor %}</section>
{% endfor %}
<footer>Source: {{ source|e }}</footer>
</body></html>
"""


def _inline(text: str) -> str:
    """Markdown's `code` and **bold** in escaped HTML."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _html_cell(cell: Cell) -> str:
    title = ' title="' + html.escape(cell.title, quote=True) + '"' if cell.title else ""
    text = _inline(cell.text)
    return f"<td{title}>{'<strong>' + text + '</strong>' if cell.bold and cell.text else text}</td>"


def _html_block(block: Any, section_title: str) -> str:
    if isinstance(block, Text):
        return f"<p>{_inline(block.text)}</p>"
    if isinstance(block, Figure):
        caption = f"<figcaption>{_inline(block.caption)}</figcaption>" if block.caption else ""
        return (f'<figure id="{block.id}"><img src="{_data_uri(block.png)}" alt="{html.escape(block.title)}">'
                f"{caption}</figure>")
    if isinstance(block, Table):
        head = "".join(f'<th class="label">{_inline(c)}</th>' if i == 0 else f"<th>{_inline(c)}</th>"
                       for i, c in enumerate(block.columns))
        body = []
        for row in block.rows:
            cells = "".join(_html_cell(c) for c in row.cells)
            body.append(f'<tr class="{row.kind}" data-label="{html.escape(row.label, quote=True)}">'
                        f'<td class="label">{html.escape(row.label)}</td>{cells}</tr>')
        notes = "".join(f'<p class="note">{_inline(n)}</p>' for n in block.notes)
        title = f"<h3>{_inline(block.title)}</h3>" if block.title and block.title != section_title else ""
        thead = f"<thead><tr>{head}</tr></thead>" if any(block.columns) else ""
        table = f'<table id="{block.id}" class="{block.align}">{thead}<tbody>{"".join(body)}</tbody></table>'
        if block.collapsed:
            return f"<details><summary>{_inline(block.title)}</summary>{table}{notes}</details>"
        return f"{title}{table}{notes}"
    if isinstance(block, ImageGrid):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in block.columns)
        body = []
        for label, images in block.rows:
            cells = "".join(
                f'<td class="img"><img class="sample" src="{_data_uri(png)}" alt="{html.escape(label)}, '
                f'{html.escape(column)}" style="height:{_scaled_height(png)}px"></td>'
                if png is not None else "<td>–</td>" for column, (name, png) in zip(block.columns[1:], images,
                                                                                     strict=False))
            body.append(f'<tr data-label="{html.escape(label, quote=True)}"><td class="label">{html.escape(label)}'
                        f"</td>{cells}</tr>")
        notes = "".join(f'<p class="note">{_inline(n)}</p>' for n in block.notes)
        return (f'<h3>{html.escape(block.title)}</h3><table id="{block.id}" class="samples"><thead><tr>{head}</tr>'
                f'</thead><tbody>{"".join(body)}</tbody></table>{notes}')
    raise TypeError(type(block))


def _scaled_height(png: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        height = image.size[1]
    return height * max(1, min(4, 64 // max(1, height - 4)))


def render_html(title: str, sections: list[Section], source: str) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined)
    rendered = [{"title": s.title, "anchor": _slug(s.title),
                 "blocks": [_html_block(b, s.title) for b in s.blocks]} for s in sections]
    return env.from_string(_HTML).render(title=title, css=_CSS, sections=rendered, source=source)


# ------------------------------------------------------------------------------------------------------ entry


def load(source: Path | str, *, tracking_uri: str | None = None, run_id: str | None = None) -> ReportData:
    """A run directory (it has run.json or trials/) or, with a tracking URI, an MLflow experiment name."""
    import os

    path = Path(source)
    if path.is_dir() and ((path / "run.json").exists() or (path / "trials").is_dir()):
        return load_run_dir(path)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        raise ValueError(f"{source!r} is not a run directory (no run.json or trials/); to report an MLflow "
                         "experiment give its tracking URI (--tracking-uri or MLFLOW_TRACKING_URI)")
    return load_mlflow(str(source), uri, run_id)


def build_report(
    source: Path | str,
    out_dir: Path | None = None,
    *,
    tracking_uri: str | None = None,
    run_id: str | None = None,
) -> Path:
    """Write ``index.html`` and ``README.md`` for ``source`` and return the report directory.

    ``source`` is a run directory or an MLflow experiment name (with ``tracking_uri``; ``run_id`` picks a parent run,
    default the newest). The default ``out_dir`` is ``<run dir>/report`` (for MLflow: the run directory recorded on
    the parent run, when it exists on this machine). Published references (``reports/<suite>/``) are written only when
    ``out_dir`` says so.
    """
    data = load(source, tracking_uri=tracking_uri, run_id=run_id)
    if out_dir is None:
        if data.run_dir is not None:
            out_dir = data.run_dir / REPORT_DIR
        else:
            raise ValueError("give out_dir (--out): the report's source is an MLflow experiment whose run directory "
                             "is not on this machine")
    return write_report(data, Path(out_dir))


def write_report(data: ReportData, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("figures", "samples"):  # a rebuilt report never shows images of an earlier one
        for old in (out_dir / stale).glob("*.png"):
            old.unlink()
    report = Report(data)
    sections = report.sections()
    suite = data.run.get("suite") or data.suite.get("name") or "results"
    title = f"Few-shot generation report: {suite}"
    (out_dir / "README.md").write_text(render_markdown(title, sections, data.source, out_dir))
    (out_dir / "index.html").write_text(render_html(title, sections, data.source))
    return out_dir
