"""Comparison reports: results (a run directory's JSON store, or an MLflow experiment) → pandas → Markdown + HTML.

``build_report(source)`` loads every trial (:mod:`.load`: two DataFrames, the same from either source), builds the
sections (:mod:`.build`, with :mod:`.statistics` and the sweep blocks of :mod:`.sweep`) and renders them
(:mod:`.render`) into ``<run dir>/report/`` (or ``out_dir``):

* ``index.html`` — self-contained: CSS inline, every image a base64 ``data:`` URI, no network access;
* ``README.md`` — Markdown tables, images as files next to it (``figures/``, ``samples/``).

Directions (↑/↓), targets (≈ 1) and which values are references of which come from the metric registry table
(:mod:`harness.metrics.table`), never from the spelling of a key.
"""

from __future__ import annotations

from pathlib import Path

from harness.report.build import Report
from harness.report.load import ReportData, load, load_mlflow, load_run_dir
from harness.report.render import render_html, render_markdown
from harness.report.statistics import fmt, mean_ci

__all__ = ["REPORT_DIR", "Report", "ReportData", "build_report", "fmt", "load", "load_mlflow", "load_run_dir",
           "mean_ci", "render_html", "render_markdown", "write_report"]

REPORT_DIR = "report"


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
    """Build ``data``'s sections and write ``README.md`` (with its image files) and ``index.html`` into
    ``out_dir``; returns ``out_dir``."""
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
