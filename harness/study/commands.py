"""``harness study``: create a human study from a run, serve it, export it to a crowd platform, import the crowd's
answers, score it (table, ``scores.json``, MLflow, a section of the run's report)."""

from __future__ import annotations

import math
import secrets
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from harness.study.manifest import DESIGNS, StudyError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Human evaluation: a rating study of a run's samples (create, serve, export, import, score).")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)
TOKEN_FILE = "token.txt"
SCORES_FILE = "scores.json"
RUN_STUDIES_DIR = "studies"  # <run dir>/studies/<study>.json: the scores the run's report shows

StudyArg = Annotated[Path, typer.Argument(help="study folder (made by `harness study create`)", metavar="STUDY")]


def _fail(exc: Exception) -> None:
    err_console.print(f"[red]✗[/red] {exc}", highlight=False)
    raise typer.Exit(2) from None


def _open(folder: Path):
    from harness.study.db import Responses
    from harness.study.manifest import load_manifest

    try:
        manifest = load_manifest(folder)
        return manifest, Responses(manifest)
    except StudyError as exc:
        _fail(exc)


def study_token(folder: Path, given: str | None, public: bool) -> str | None:
    """The token rater links must carry: ``given``; else, for a public study, the one saved in the study folder
    (made on first public serve, so links stay valid across restarts); else none."""
    saved = folder / TOKEN_FILE
    if given:
        return given
    if saved.is_file():
        return saved.read_text().strip() or None
    if not public:
        return None
    from harness.files import write_bytes

    token = secrets.token_urlsafe(16)
    write_bytes(saved, token.encode(), mode=0o600)
    return token


@app.command()
def create(
    run_dir: Annotated[Path, typer.Argument(help="run directory whose trials saved their samples", metavar="RUN_DIR")],
    out: Annotated[Path, typer.Option("--out", help="the new study folder")],
    design: Annotated[str, typer.Option(help=f"{' or '.join(DESIGNS)}")] = "real-vs-fake",
    images_per_method: Annotated[int, typer.Option(help="generated images per method, balanced over classes")] = 100,
    methods: Annotated[Optional[str], typer.Option(help="comma-separated method labels (default: all)")] = None,
    shots: Annotated[Optional[int], typer.Option(help="the shots setting to show (needed when several ran)")] = None,
    trials_per_rater: Annotated[int, typer.Option(help="trials each rater judges, catch trials apart")] = 100,
    catch_trials: Annotated[int, typer.Option(help="noise catch trials every rater sees")] = 6,
    exposure_ms: Annotated[Optional[int], typer.Option(help="show each image this long only (HYPE-time)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the image draw and of every rater's order")] = 0,
) -> None:
    """Build a study folder from a run's saved samples and held-out real images."""
    from harness.study.manifest import create_study

    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    try:
        m = create_study(run_dir, out, design=design, images_per_method=images_per_method, methods=names,
                         shots=shots, trials_per_rater=trials_per_rater, catch_trials=catch_trials,
                         exposure_ms=exposure_ms, seed=seed)
    except StudyError as exc:
        _fail(exc)
    count = {k: sum(t.kind == k for t in m.trials) for k in ("generated", "real", "catch")}
    per_rater = (m.generated_per_rater * len(m.methods) + m.real_per_rater + count["catch"])
    console.print(f"study {m.name} ({m.design}) in {out}: {len(m.methods)} methods ({', '.join(m.methods)}), "
                  f"{count['generated']} generated / {count['real']} real-only / {count['catch']} catch trials, "
                  f"{len(m.images)} images; {per_rater} trials per rater", highlight=False)
    if m.run.get("real_images_reused"):
        console.print(f"[yellow]note[/yellow]: the splits hold out too few real images: {m.run['real_images_reused']}"
                      " real partners are reused", highlight=False)
    console.print(f"next: harness study serve {out}", highlight=False)


@app.command()
def serve(
    folder: StudyArg,
    host: Annotated[str, typer.Option(help="interface to bind (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8765,
    token: Annotated[Optional[str], typer.Option(help="access token rater links carry (required, and made if not "
                                                      "given, for any --host other than loopback)")] = None,
    raters: Annotated[int, typer.Option(help="print this many personal rater links")] = 5,
    base_url: Annotated[Optional[str], typer.Option(help="the address raters use, if not http://HOST:PORT "
                                                         "(e.g. behind a proxy)")] = None,
) -> None:
    """Serve the rating app (Ctrl+C stops it; answers are stored as they come, a restart resumes every rater)."""
    import uvicorn

    from harness.study.server import create_app, is_loopback, rater_links
    from harness.tracking.ui import exposure_warning

    public = not is_loopback(host)
    token = study_token(folder, token, public)
    try:
        app_ = create_app(folder, token)
    except StudyError as exc:
        _fail(exc)
    manifest = app_.state.manifest
    base = base_url or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    console.print(f"study {manifest.name} ({manifest.design}) at {base}/ — open link per rater:", highlight=False)
    for link in rater_links(base, raters, token, manifest):
        console.print(f"  {link}", highlight=False, soft_wrap=True)
    console.print(f"new raters: {base}/{'?t=' + token if token else ''}", highlight=False, soft_wrap=True)
    warning = exposure_warning(host, "the study server", "open the study with the token in the links")
    if warning:
        err_console.print(warning.replace(", without a password", "") +
                          " Every page and image needs the token, so share links only with raters.", highlight=False)
    uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False)


@app.command("export")
def export(
    folder: StudyArg,
    to: Annotated[str, typer.Option("--to", help="mturk or prolific")],
    base_url: Annotated[str, typer.Option(help="the public https address the study is served at")],
    token: Annotated[Optional[str], typer.Option(help="the study token (default: the one `serve` saved)")] = None,
) -> None:
    """Write what a crowd platform needs into STUDY/exports/ (MTurk: HIT layout + input CSV; Prolific: the study
    URL and completion code)."""
    from harness.study.crowd import export_mturk, export_prolific

    manifest, responses = _open(folder)
    responses.close()
    token = study_token(folder, token, public=True)
    try:
        if to == "mturk":
            layout, rows = export_mturk(manifest, base_url, token)
            console.print(f"MTurk: paste {layout} as the project's layout (Design Layout → Source), upload {rows} as "
                          "a batch; then `harness study import` the batch results CSV", highlight=False)
        elif to == "prolific":
            path = export_prolific(manifest, base_url, token)
            console.print(path.read_text(), highlight=False, markup=False)
        else:
            raise StudyError("--to", f"{to!r}: mturk or prolific")
    except StudyError as exc:
        _fail(exc)


@app.command("import")
def import_(
    folder: StudyArg,
    results: Annotated[Path, typer.Argument(help="MTurk batch-results CSV", metavar="RESULTS.csv")],
) -> None:
    """Store an MTurk batch's judgements in the study's database (a row imported before is skipped)."""
    from harness.study.crowd import import_mturk

    manifest, responses = _open(folder)
    try:
        summary = import_mturk(manifest, responses, results)
    except StudyError as exc:
        _fail(exc)
    finally:
        responses.close()
    console.print(f"{results}: {summary.stored} judgements stored from {len(summary.workers)} workers; "
                  f"{summary.already} imported before, {summary.rejected} rejected on MTurk (skipped)", highlight=False)


def _pct(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f} %"


@app.command()
def score(
    folder: StudyArg,
    min_catch_accuracy: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="exclude raters with a lower share of catch trials right")] = 0.8,
    run_dir: Annotated[Optional[Path], typer.Option(
        help="the run to add the scores to (default: the run the study was made from)")] = None,
    tracking: Annotated[bool, typer.Option(help="log the scores to the run's MLflow runs")] = True,
    report: Annotated[bool, typer.Option(help="re-render the run's report with the study section")] = True,
) -> None:
    """Score the study: per-method rates with CIs over raters and images, agreement, paired comparisons; written to
    STUDY/scores.json and RUN_DIR/studies/, logged to MLflow, shown in the run's report."""
    from harness.files import write_json
    from harness.study.scoring import score_study

    manifest, responses = _open(folder)
    try:
        scores = score_study(manifest, responses, min_catch_accuracy=min_catch_accuracy)
    finally:
        responses.close()
    if not scores.judgements_used:
        _fail(StudyError(str(folder), "no judgements to score yet (serve the study, or import crowd results)"))
    table = Table(title=f"study {scores.name}: {scores.score_name} ({scores.design})")
    for column in ("", scores.score_name, "95 % CI", "judgements", "raters", "images"):
        table.add_column(column, justify="left" if not column else "right")
    for r in scores.methods + ([scores.real] if scores.real else []):
        label = r.label + (" (judged real)" if r is scores.real else "")
        table.add_row(label, _pct(r.rate), f"[{_pct(r.ci_low)}, {_pct(r.ci_high)}]", str(r.judgements),
                      str(r.raters), str(r.images))
    console.print(table)
    console.print(f"raters: {scores.raters_kept} of {scores.raters_total} kept (catch accuracy ≥ "
                  f"{scores.min_catch_accuracy:.0%}; {len(scores.excluded)} excluded, {scores.raters_unscreened} "
                  f"saw no catch trial); agreement: Krippendorff α = {scores.alpha:.3f}, Fleiss κ = {scores.kappa:.3f}"
                  f" ({scores.kappa_items} images × {scores.kappa_raters_per_item} raters); best (paired over raters):"
                  f" {scores.best or 'tied'}", highlight=False)
    data = scores.to_dict()
    write_json(folder / SCORES_FILE, data)
    run_dir = run_dir or (Path(manifest.run["dir"]) if manifest.run.get("dir") else None)
    if run_dir is None or not run_dir.is_dir():
        console.print(f"scores: {folder / SCORES_FILE} (the run directory {run_dir} is not here: no report, no MLflow)",
                      highlight=False)
        return
    write_json(run_dir / RUN_STUDIES_DIR / f"{manifest.name}.json", data)
    console.print(f"scores: {folder / SCORES_FILE} and {run_dir / RUN_STUDIES_DIR / (manifest.name + '.json')}",
                  highlight=False)
    if tracking:
        from harness.study.tracking import log_scores

        try:
            logged = log_scores(run_dir, scores)
            console.print(logged, highlight=False)
        except Exception as exc:  # noqa: BLE001 - the scores are on disk whatever MLflow does
            err_console.print(f"[yellow]MLflow: not logged ({type(exc).__name__}: {exc})[/yellow]", highlight=False)
    if report:
        from harness.report import build_report

        try:
            path = build_report(run_dir)
            console.print(f"report: {path / 'index.html'}", highlight=False)
        except Exception as exc:  # noqa: BLE001
            err_console.print(f"[yellow]report not written: {exc}[/yellow]", highlight=False)
