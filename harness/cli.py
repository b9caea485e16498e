"""The ``harness`` command: run, validate, methods, metrics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from harness.executors import EXECUTORS
from harness.registry import METHODS
from harness.suite import SuiteError, expand, load_suite

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark harness for few-shot image generation.")
console = Console()
err_console = Console(stderr=True)


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(help="suite YAML files")]) -> None:
    """Check suite files without running anything; every problem is named with its file and field."""
    bad = 0
    for file in files:
        try:
            suite = load_suite(file)
        except SuiteError as exc:
            bad += 1
            err_console.print(f"[red]✗[/red] {exc}", highlight=False)
            continue
        trials = expand(suite)
        console.print(f"[green]✓[/green] {file}: suite {suite.name!r}, {len(trials)} trials", highlight=False)
    raise typer.Exit(1 if bad else 0)


@app.command()
def methods() -> None:
    """List registered methods (built in and from the `harness.methods` entry points)."""
    table = Table("name", "conditional", "description", "source")
    for name in METHODS.names():
        try:
            cls = METHODS.get(name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
            table.add_row(name, "?", f"[red]cannot import: {exc}[/red]", METHODS.target(name))
            continue
        table.add_row(name, "yes" if cls.conditional else "no (fitted per class)", cls.description,
                      METHODS.target(name))
    console.print(table)


@app.command()
def metrics() -> None:
    """List registered metrics with their direction."""
    from harness.metrics import METRICS

    table = Table("name", "better", "description")
    for name in METRICS.names():
        spec = METRICS.get(name)
        table.add_row(name, "↑ higher" if spec.higher_is_better else "↓ lower", spec.description)
    console.print(table)


@app.command()
def run(
    suite_file: Annotated[Path, typer.Argument(help="suite YAML file", metavar="SUITE")],
    executor: Annotated[str, typer.Option(help=f"one of {', '.join(EXECUTORS)}")] = "inprocess",
    run_dir: Annotated[Optional[Path], typer.Option(help="reuse this run directory (finished trials are kept)")] = None,
    runs_root: Annotated[Path, typer.Option(help="where new run directories are created")] = Path("runs"),
    only: Annotated[Optional[str], typer.Option("--methods", help="comma-separated method labels to run")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if granted), cpu or cuda[:N]")] = "auto",
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Run every trial of a suite and write one result per trial under the run directory."""
    from harness.run import RunDir

    if executor not in EXECUTORS:
        raise typer.BadParameter(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    try:
        suite = load_suite(suite_file)
        specs = expand(suite, only.split(",") if only else None)
    except SuiteError as exc:
        err_console.print(f"[red]✗[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    run = RunDir.create(suite, suite_file, runs_root, run_dir)
    pending = [s for s in specs if run.finished(s) is None]
    console.print(f"suite [bold]{suite.name}[/bold]: {len(specs)} trials, {len(specs) - len(pending)} already "
                  f"finished; run directory [bold]{run.path}[/bold]", highlight=False)

    from harness.executors import run_inprocess

    run_inprocess(pending, run.path, device=device, progress=progress)
    results = [run.finished(s) for s in specs]
    _print_summary(run.path)
    failed = sum(r is None for r in results)
    console.print(f"results: {run.path}/trials/*/result.json ({len(specs) - failed} ok, {failed} failed)")
    raise typer.Exit(1 if failed else 0)


def _print_summary(run_dir: Path) -> None:
    from harness.trial import RESULT_FILE, TrialResult  # imported here: keeps torchvision out of `validate`

    table = Table("trial", "status", "fit s", "final losses", "metrics")
    for path in sorted(run_dir.glob(f"trials/*/{RESULT_FILE}")):
        r = TrialResult.load(path)
        losses = " ".join(f"{k}={v:.3f}" for k, v in r.final_losses.items())
        shown = " ".join(f"{k}={v['value']:.3g}" for k, v in r.metrics.items())
        status = "[green]ok[/green]" if r.status == "ok" else f"[red]{r.status}[/red]: {r.error}"
        table.add_row(r.name, status, f"{r.wall_times.get('fit_s', float('nan')):.1f}", losses, shown)
    console.print(table)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
