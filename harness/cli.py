"""The ``harness`` command: run, sweep, reproduce, evaluate, validate, report, ui, sync-tracking, methods,
metrics, study (human evaluation: :mod:`harness.study.commands`)."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from harness.console import DecodeProgress, RunProgress, headline_text
from harness.data import DataSourceError
from harness.executors import EXECUTORS
from harness.registry import METHODS
from harness.suite import SuiteError, check_images, environment_problems, expand, load_suite

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark harness for few-shot image generation.")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # errors unwrapped: one problem per line, greppable
STORAGE_EXIT = 3  # shared storage stayed unreachable past its retry limit: the local results are intact


def _add_study_commands() -> None:
    from harness.study.commands import app as study_app

    app.add_typer(study_app, name="study")


_add_study_commands()


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(help="suite YAML files")]) -> None:
    """Check suite files without running anything; every problem is named with its file and field."""
    bad = 0
    for file in files:
        try:
            suite = load_suite(file)
            with DecodeProgress(console) as decoding:  # every image decoded (cached), so none fails a run later
                images = check_images(suite, str(file), progress=decoding)
        except SuiteError as exc:
            bad += 1
            err_console.print(f"[red]✗[/red] {exc}", highlight=False)
            continue
        from harness.suite import class_partitions

        trials, splits = expand(suite), class_partitions(suite)
        console.print(f"[green]✓[/green] {file}: suite {suite.name!r}, {len(trials)} trials ({len(suite.methods)} "
                      f"methods × {len(splits)} class split{'s' * (len(splits) > 1)} × {len(suite.protocol.shots)} "
                      f"shots × {len(suite.protocol.seeds)} seeds)", highlight=False)
        for i, part in enumerate(splits[1:], start=1):
            console.print(f"  split {i}: base {list(part.base)}, novel {list(part.novel)}, validation "
                          f"{list(part.validation)}", highlight=False)
        if images is not None:
            console.print(f"  images: all {images.total} under {images.root} decode ({images.decoded} decoded now, "
                          f"{images.cached} unchanged since an earlier check)", highlight=False, soft_wrap=True)
        for loc, msg in environment_problems(suite):
            console.print(f"[yellow]![/yellow] {file}: {loc}: {msg} (needed to run it here)", highlight=False,
                          soft_wrap=True)
    raise typer.Exit(1 if bad else 0)


@app.command()
def methods() -> None:
    """List registered methods (built in and from the `harness.methods` entry points)."""
    table = Table("name", "conditional", "budget.epochs", "description", "source")
    for name in METHODS.names():
        try:
            cls = METHODS.get(name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
            table.add_row(name, "?", "?", f"[red]cannot import: {exc}[/red]", METHODS.target(name))
            continue
        table.add_row(name, "yes" if cls.conditional else "no (fitted per class)",
                      "yes" if cls.supports_epochs else "no (steps)", cls.description, METHODS.target(name))
    console.print(table)


@app.command()
def metrics() -> None:
    """List registered metrics with their direction (or target) and keys."""
    from harness.metrics.table import METRICS

    table = Table("name", "better", "keys", "description", "collapsed when")
    for name in METRICS.names():
        spec = METRICS.get(name)
        table.add_row(name, spec.direction.text, spec.describe_keys(), spec.description,
                      spec.collapse.text if spec.collapse is not None else "")
    console.print(table)


RunDirOption = Annotated[Optional[Path], typer.Option(help="reuse this run directory (finished trials are kept)")]
RunsRootOption = Annotated[Path, typer.Option(help="where new run directories are created")]
AddressOption = Annotated[Optional[str], typer.Option(help="Ray: join this cluster (default: start a local Ray)")]
DeviceOption = Annotated[str, typer.Option(help="auto (CUDA if granted), cpu or cuda[:N]")]
ProgressOption = Annotated[bool, typer.Option(help="show progress")]
TrackingUriOption = Annotated[Optional[str], typer.Option(
    help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else a sqlite store in the run directory)")]
TrackingOption = Annotated[bool, typer.Option(help="log to MLflow (results are always written as JSON)")]
ClusterOption = Annotated[Optional[Path], typer.Option(
    help="Ray cluster-launcher YAML: validate it, submit the run to its head as a Ray Job, stream the logs")]
UpOption = Annotated[bool, typer.Option("--up", help="with --cluster: bring the cluster up first (like `ray up`)")]
DashboardOption = Annotated[Optional[str], typer.Option(
    help="with --cluster: the head's dashboard URL (default http://<head IP>:<--dashboard-port in the YAML or 8265>)")]
StorageOption = Annotated[Optional[str], typer.Option(
    help="shared storage every node can write (s3://, gs://, file:///shared/mount): needed on multi-node clusters")]


def _load(suite_file: Path):
    """The suite, valid and runnable here (weights files present), or exit 2 with every problem named."""
    try:
        suite = load_suite(suite_file)
        with DecodeProgress(console) as decoding:  # a bad image is named now, before any run directory exists
            check_images(suite, str(suite_file), progress=decoding)
        problems = environment_problems(suite)
        if problems:
            raise SuiteError(str(suite_file), problems)
    except SuiteError as exc:
        err_console.print(f"[red]✗[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    return suite


VerboseOption = Annotated[bool, typer.Option("--verbose", help="also show Ray Tune's own trial tables and logs")]


def _executor(name: str):
    from harness.registry import UnknownNameError

    try:
        return EXECUTORS.get(name)
    except UnknownNameError as exc:
        raise typer.BadParameter(str(exc), param_hint="--executor") from None


@contextlib.contextmanager
def _session(suite, suite_file: Path, *, executor: str, address: str | None, run_dir: Path | None,
             runs_root: Path, tracking: bool, tracking_uri: str | None, storage: str | None = None,
             verbose: bool = False, specs: list | None = None, recompute: list[str] = ()):
    """Reach the executor's compute and the tracking server (clear errors before anything runs), open the run
    directory (first fetched from shared ``storage`` when it holds it: a resumed cluster run) and the MLflow parent
    run; close what was opened, whatever happens. Yields ``(run, executor, tracking context, outcome)``."""
    from harness.run import RunDir, RunDirBusy, new_run_path

    executor_cls = _executor(executor)
    if storage is not None and not executor_cls.supports_storage:
        raise typer.BadParameter(f"--storage is for executors that run trials on other nodes, not {executor!r}")
    if address is not None and executor_cls.name == "inprocess":
        raise typer.BadParameter("--address is for the ray executor", param_hint="--address")
    run_storage = None
    if storage is not None and recompute:  # trials read a finished result from storage: setting aside the local copy
        err_console.print("[red]✗[/red] --recompute works on a run directory, not yet on a run in --storage: remove "
                          "trials/TRIAL/result.json from the storage prefix yourself, then resume", highlight=False)
        raise typer.Exit(2)
    if storage is not None:
        from harness.storage import RunStorage, StorageError, StorageUnavailable, check_storage_uri, run_key

        try:
            uri = check_storage_uri(storage)
        except StorageError as exc:
            err_console.print(f"[red]✗[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        run_dir = run_dir or new_run_path(suite, runs_root)
        run_storage = RunStorage(uri, run_key(suite.name, run_dir))
        try:
            if run_storage.download("", run_dir):
                console.print(f"resuming the run stored at {run_storage.root}", highlight=False)
        except StorageUnavailable as exc:
            err_console.print(f"[red]✗[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
    runner = executor_cls(address=address, storage=run_storage, verbose=verbose,
                          max_failures=suite.resources.max_failures)
    try:
        reached = runner.connect()
    except ConnectionError as exc:
        err_console.print(f"[red]✗[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    context = None
    status = "KILLED"
    run = None
    try:
        try:
            run = RunDir.create(suite, suite_file, runs_root, run_dir)
            if specs is not None:  # before MLflow and the trials: a damaged result stops the run with nothing done
                run.check_results(specs, recompute)
        except (RunDirBusy, ValueError) as exc:
            err_console.print(f"[red]✗[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        console.print(f"run directory: [bold]{run.path}[/bold]", highlight=False)
        if tracking:
            from harness import tracking as mlflow_tracking

            uri = mlflow_tracking.resolve_tracking_uri(tracking_uri, run.path)
            try:
                mlflow_tracking.check_tracking_server(uri)
            except ConnectionError as exc:
                err_console.print(f"[red]✗[/red] {exc}", highlight=False)
                raise typer.Exit(2) from None
            try:
                context = mlflow_tracking.start_run_tracking(suite, suite_file, run.path, uri, executor=executor,
                                                             cluster_name=address)
            except Exception as exc:  # noqa: BLE001 - any MLflow failure here: say so before trials run
                err_console.print(f"[red]✗[/red] cannot start MLflow tracking at {uri}: {exc}", highlight=False)
                raise typer.Exit(2) from None
            console.print(f"MLflow: {uri} (experiment {suite.name!r}); browse with `harness ui {run.path}`",
                          highlight=False)
        if reached:
            console.print(reached, highlight=False)
        outcome: dict = {"failed": 0, "storage": run_storage}
        yield run, runner, context, outcome
        status = "FAILED" if outcome["failed"] else "FINISHED"
    finally:
        if context is not None:
            mlflow_tracking.finish_run_tracking(context, status)
        runner.close()
        if run is not None:
            run.close()


@app.command()
def run(
    suite_file: Annotated[Path, typer.Argument(help="suite YAML file", metavar="SUITE")],
    executor: Annotated[str, typer.Option(help=f"one of {', '.join(EXECUTORS.names())}")] = "ray",
    address: AddressOption = None,
    run_dir: RunDirOption = None,
    runs_root: RunsRootOption = Path("runs"),
    only: Annotated[Optional[str], typer.Option("--methods", help="comma-separated method labels to run")] = None,
    device: DeviceOption = "auto",
    progress: ProgressOption = True,
    verbose: VerboseOption = False,
    tracking_uri: TrackingUriOption = None,
    tracking: TrackingOption = True,
    cluster: ClusterOption = None,
    up: UpOption = False,
    dashboard: DashboardOption = None,
    storage: StorageOption = None,
    recompute: Annotated[Optional[list[str]], typer.Option(
        "--recompute", metavar="TRIAL",
        help="compute this trial again (its directory name under trials/, its name or its id; repeatable, or "
             "comma-separated): its result.json is set aside, renamed, not deleted. How a damaged result is "
             "replaced")] = None,
) -> None:
    """Run every trial of a suite; one result.json per trial under the run directory, MLflow runs beside."""
    _executor(executor)
    recompute = [name for item in recompute or [] for name in item.split(",") if name]
    suite = _load(suite_file)
    try:
        specs = expand(suite, only.split(",") if only else None)
    except SuiteError as exc:
        err_console.print(f"[red]✗[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if cluster is not None:
        extra = (["--methods", only] if only else []) + [a for n in recompute for a in ("--recompute", n)]
        _run_on_cluster("run", suite, suite_file, cluster, up=up, dashboard=dashboard, storage=storage,
                        run_dir=run_dir, runs_root=runs_root, tracking=tracking, tracking_uri=tracking_uri,
                        extra_args=[*extra, "--device", device])
    with _session(suite, suite_file, executor=executor, address=address, run_dir=run_dir, runs_root=runs_root,
                  tracking=tracking, tracking_uri=tracking_uri, storage=storage, verbose=verbose, specs=specs,
                  recompute=recompute) as (run, runner, context, outcome):
        _run_trials(suite, specs, run, runner, context, outcome, device=device, progress=progress)
        _print_summary(run.path)
    _write_report(run.path, outcome["storage"])
    failed = outcome["failed"]
    console.print(f"results: {run.path}/trials/*/result.json ({len(specs) - failed} ok, {failed} failed)")
    raise typer.Exit(1 if failed else 0)


def _run_trials(suite, specs, run, runner, context, outcome: dict, *, device: str, progress: bool) -> None:
    """Run ``specs`` (those not finished yet) in an open :func:`_session`; counts the unfinished into ``outcome``.
    Shared by ``run`` and ``reproduce``, so a reproduction runs trials exactly as a run does."""
    done = sum(run.finished(s) is not None for s in specs)
    console.print(f"suite [bold]{suite.name}[/bold]: {len(specs)} trials, {done} already finished", highlight=False)
    from harness.storage import StorageUnavailable

    try:
        with RunProgress(len(specs), console=console, enabled=progress, done=done) as shown:
            runner.run(specs, run.path, device=device, tracking=context, progress=shown)
    except StorageUnavailable as exc:  # finished trials are in storage or on their nodes; the same command resumes
        err_console.print(f"[red]✗[/red] {exc}", highlight=False)
        raise typer.Exit(STORAGE_EXIT) from None
    except DataSourceError as exc:  # raised by the executor loading the data in this process, before any trial starts
        err_console.print(f"[red]✗[/red] dataset ({suite.dataset.name}): {exc}", highlight=False)
        err_console.print(f"no trial started: {run.path} lost no result and holds no new one; fix the data (`harness "
                          f"validate` lists every bad image) and resume with --run-dir {run.path}", highlight=False)
        raise typer.Exit(2) from None
    outcome["failed"] = sum(run.finished(s) is None for s in specs)


def _int_list(text: str | None, option: str) -> list[int] | None:
    try:
        return [int(x) for x in text.split(",")] if text else None
    except ValueError:
        raise typer.BadParameter(f"comma-separated integers, not {text!r}", param_hint=option) from None


@app.command()
def reproduce(
    source: Annotated[Path, typer.Argument(help="run directory of the recorded run (it holds suite.yaml, trials/)",
                                           metavar="RUN_DIR")],
    only: Annotated[Optional[str], typer.Option("--methods", help="comma-separated method labels to re-run")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="comma-separated seeds to re-run")] = None,
    executor: Annotated[str, typer.Option(help=f"one of {', '.join(EXECUTORS.names())}")] = "ray",
    address: AddressOption = None,
    run_dir: Annotated[Optional[Path], typer.Option(
        help="the new run's directory (default a new one under --runs-root; finished trials there are kept)")] = None,
    runs_root: RunsRootOption = Path("runs"),
    device: DeviceOption = "auto",
    progress: ProgressOption = True,
    verbose: VerboseOption = False,
    tracking_uri: TrackingUriOption = None,
    tracking: TrackingOption = True,
) -> None:
    """Re-run a recorded run's trials (same suite, same trial ids) and compare: per trial bit-identical or not and
    whether the hardware facts match; per method and headline metric a paired test. Exit 0 if reproduced."""
    from harness import reproduce as rep

    _executor(executor)
    try:
        recorded = rep.load_recorded(source)
    except ValueError as exc:
        err_console.print(f"[red]✗[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if run_dir is not None and run_dir.resolve() == source.resolve():
        raise typer.BadParameter("the new run needs its own directory, not the recorded one", param_hint="--run-dir")
    suite = _load(recorded.suite_file)
    try:
        specs, unmatched = rep.select_specs(suite, recorded, only.split(",") if only else None,
                                            _int_list(seeds, "--seeds"))
    except SuiteError as exc:
        err_console.print(f"[red]✗[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    with _session(suite, recorded.suite_file, executor=executor, address=address, run_dir=run_dir,
                  runs_root=runs_root, tracking=tracking, tracking_uri=tracking_uri, verbose=verbose,
                  specs=specs) as (run, runner, context, outcome):
        _run_trials(suite, specs, run, runner, context, outcome, device=device, progress=progress)
    result = rep.compare(recorded, run.path, specs, unmatched)
    for line in rep.render(result):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(0 if result.reproduced else 1)


def _name_list(text: str | None) -> list[str] | None:
    names = [x.strip() for x in text.split(",") if x.strip()] if text else None
    return names or None


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="run directory whose trials saved their samples", metavar="RUN_DIR")],
    metrics: Annotated[Optional[str], typer.Option(
        help="comma-separated metric names (`harness metrics`); default each trial's own")] = None,
    evaluator: Annotated[Optional[str], typer.Option(
        help="domain_classifier or inception_v3; default each trial's own")] = None,
    samples_per_class: Annotated[Optional[int], typer.Option(
        min=1, help="score the first N saved samples of each class; default the suite's samples_per_class")] = None,
    device: DeviceOption = "auto",
    progress: ProgressOption = True,
    tracking_uri: TrackingUriOption = None,
    tracking: Annotated[bool, typer.Option(help="log the new values to the trials' MLflow child runs")] = True,
) -> None:
    """Score a run's saved samples again, without training: the values go into each result.json as a new metrics
    version (earlier versions kept), into the trials' existing MLflow child runs, and into a re-rendered report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness import rescore as rs
    from harness.metrics import headline_values
    from harness.run import RunDirBusy, lock_run_dir

    try:  # re-scoring rewrites result.json files: not while a run (or another evaluate) is writing them
        lock = lock_run_dir(run_dir) if run_dir.is_dir() else None
    except RunDirBusy as exc:
        err_console.print(f"[red]✗[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        try:
            planned = rs.plan(run_dir, _name_list(metrics), evaluator, samples_per_class)
        except rs.RescoreError as exc:
            for where, what in exc.problems:
                err_console.print(f"[red]✗[/red] {where}: {what}", highlight=False)
            raise typer.Exit(2) from None
        context = None
        if tracking:
            from harness import tracking as mlflow_tracking

            context = mlflow_tracking.run_dir_context(run_dir, tracking_uri)
            if context is None:
                where = f" in {tracking_uri}" if tracking_uri else ""
                console.print(f"MLflow: {run_dir} has no tracked parent run{where}; the new values go to result.json "
                              "only", highlight=False)
            else:
                try:
                    mlflow_tracking.check_tracking_server(context.tracking_uri)
                except ConnectionError as exc:
                    err_console.print(f"[red]✗[/red] {exc}", highlight=False)
                    raise typer.Exit(2) from None
        for name, why in planned.skipped:
            console.print(f"[yellow]skipped[/yellow] {name}: {why}", highlight=False)
        datasets, failed, started = rs.Datasets(), 0, time.perf_counter()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, disable=not progress, transient=True) as bar:
            task = bar.add_task("evaluating", total=len(planned.trials))
            for trial in planned.trials:
                bar.update(task, description=trial.result.name)
                try:
                    evaluation, entry = rs.rescore(trial, datasets, device)
                except Exception as exc:  # noqa: BLE001 - one trial's failure is reported, the others still run
                    failed += 1
                    err_console.print(f"[red]✗[/red] {trial.result.name}: {type(exc).__name__}: {exc}", highlight=False)
                    bar.advance(task)
                    continue
                logged = ""
                if context is not None:
                    try:
                        run_id = mlflow_tracking.log_metrics_version(context, trial.result, trial.directory,
                                                                     evaluation.metrics, entry)
                        logged = f", MLflow run {run_id}" if run_id else ", no MLflow child run for it (not logged)"
                    except Exception as exc:  # noqa: BLE001 - result.json holds the values whatever MLflow does
                        logged = f", not logged to MLflow ({type(exc).__name__}: {exc})"
                shown = " ".join(f"{k}={v:.3g}" for k, v in list(headline_values(evaluation.metrics).items())[:6])
                console.print(f"{trial.result.name}: metrics version {entry['version']}: {shown}{logged}",
                              highlight=False, markup=False)
                bar.advance(task)
        console.print(f"{len(planned.trials) - failed} of {len(planned.trials)} trials re-scored in "
                      f"{time.perf_counter() - started:.1f} s", highlight=False)
        _write_report(run_dir)
        raise typer.Exit(1 if failed else 0)
    finally:
        if lock is not None:
            lock.close()


@app.command()
def sweep(
    suite_file: Annotated[Path, typer.Argument(help="suite YAML file with a sweep section", metavar="SUITE")],
    address: AddressOption = None,
    run_dir: RunDirOption = None,
    runs_root: RunsRootOption = Path("runs"),
    device: DeviceOption = "auto",
    progress: ProgressOption = True,
    verbose: VerboseOption = False,
    tracking_uri: TrackingUriOption = None,
    tracking: TrackingOption = True,
    cluster: ClusterOption = None,
    up: UpOption = False,
    dashboard: DashboardOption = None,
    storage: StorageOption = None,
) -> None:
    """Search the suite's sweep space with Optuna through Ray Tune; prints and writes the best configuration."""
    suite = _load(suite_file)
    if suite.sweep is None:
        err_console.print(f"[red]✗[/red] {suite_file}: sweep: the suite has no sweep section", highlight=False)
        raise typer.Exit(2)
    if cluster is not None:
        _run_on_cluster("sweep", suite, suite_file, cluster, up=up, dashboard=dashboard, storage=storage,
                        run_dir=run_dir, runs_root=runs_root, tracking=tracking, tracking_uri=tracking_uri,
                        extra_args=["--device", device])
    with _session(suite, suite_file, executor="ray", address=address, run_dir=run_dir, runs_root=runs_root,
                  tracking=tracking, tracking_uri=tracking_uri, storage=storage, verbose=verbose) as (
            run, _runner, context, outcome):
        from harness.executors.sweep import run_sweep
        from harness.storage import StorageUnavailable

        try:
            with RunProgress(suite.sweep.num_samples, console=console, enabled=progress) as shown:
                result = run_sweep(suite, run.path, device=device, verbose=2 if verbose else 0, tracking=context,
                                   storage=outcome["storage"], progress=shown)
        except StorageUnavailable as exc:  # as in a run: what finished is in storage; the same command resumes
            err_console.print(f"[red]✗[/red] {exc}", highlight=False)
            raise typer.Exit(STORAGE_EXIT) from None
        outcome["failed"] = int(result.best_value is None)
        _print_summary(run.path)
    _write_report(run.path, outcome["storage"])
    if result.best_value is None:
        err_console.print("[red]✗[/red] no sweep trial produced the metric", highlight=False)
        raise typer.Exit(1)
    if result.scheduler:
        console.print(f"{result.stopped_early} of {result.num_trials} trials stopped early by {result.scheduler}",
                      highlight=False)
    scored = ("[yellow]the novel classes' TEST images (sweep.select_on: test): the best value is optimistic and the "
              "final scores are no longer unseen[/yellow]" if result.select_on == "test" else
              f"validation classes {list(result.scored_classes)} (their held-out training images; no test image)")
    console.print(f"best {result.metric} ({result.mode}) = {result.best_value:.4g} with {result.best_params} "
                  f"(trial {result.best_trial}), scored on {scored}; written to {run.path / 'sweep' / 'best.json'}; "
                  f"Optuna study: {result.storage}", highlight=False)


@app.command()
def report(
    source: Annotated[str, typer.Argument(
        help="a run directory, or an MLflow experiment (suite) name with --tracking-uri")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="write here (e.g. reports/<suite>) instead of <run dir>/report")] = None,
    tracking_uri: TrackingUriOption = None,
    run_id: Annotated[Optional[str], typer.Option(
        help="MLflow parent run (default: the newest of the experiment)")] = None,
) -> None:
    """Build the comparison report (index.html + README.md) of a run directory or an MLflow experiment."""
    from harness.report import build_report

    try:
        path = build_report(source, out, tracking_uri=tracking_uri, run_id=run_id)
    except (ValueError, FileNotFoundError) as exc:
        err_console.print(f"[red]✗[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"report: {path / 'index.html'} and {path / 'README.md'}", highlight=False)


@app.command()
def compare(
    run_dir: Annotated[Path, typer.Argument(help="run directory", metavar="RUN_DIR")],
    pair: Annotated[list[str], typer.Option("--pair", help="A:B, two method labels to compare (repeatable)")],
    metrics: Annotated[str, typer.Option(help="comma-separated metric keys")] = "fid,kid,recall,class_consistency",
    shots: Annotated[Optional[int], typer.Option(help="only trials at these shots")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="also write the Markdown tables here")] = None,
) -> None:
    """Planned comparisons: only the named pairs of methods, paired over (class split, seed), Holm-corrected across
    the named pairs of each metric (the report corrects across every pair), with collapse rates and fit times."""
    from harness.files import write_text
    from harness.report import load_run_dir
    from harness.report.planned import planned_comparisons, render_markdown

    pairs = []
    for i, text in enumerate(pair):
        a, sep, b = text.partition(":")
        if not sep or not a or not b:
            err_console.print(f"[red]✗[/red] --pair[{i}]: {text!r} is not A:B (two method labels)", highlight=False)
            raise typer.Exit(2)
        pairs.append((a, b))
    try:
        data = load_run_dir(run_dir)
        results = planned_comparisons(data, pairs, _name_list(metrics) or [], shots)
    except (ValueError, FileNotFoundError) as exc:
        err_console.print(f"[red]✗[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    text = render_markdown(data, pairs, results)
    typer.echo(text)  # Markdown: unwrapped
    if out is not None:
        write_text(out, text)


@app.command()
def ui(
    run_dir: Annotated[Optional[Path], typer.Argument(help="run directory (default: the newest under runs/)")] = None,
    port: Annotated[int, typer.Option(help="port of the MLflow UI")] = 5000,
    host: Annotated[str, typer.Option(help="interface to bind (127.0.0.1: this machine only)")] = "127.0.0.1",
) -> None:
    """Serve the MLflow UI on a run directory's tracking store (Ctrl+C stops it)."""
    from harness.tracking import serve_ui

    try:
        serve_ui(run_dir, port=port, host=host)
    except FileNotFoundError as exc:
        err_console.print(f"[red]✗[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


@app.command("sync-tracking")
def sync_tracking(
    run_dir: Annotated[Path, typer.Argument(help="run directory whose tracking writes were kept", metavar="RUN_DIR")],
    wait: Annotated[float, typer.Option(min=0, help="seconds to keep retrying a server that does not answer")] = 0,
) -> None:
    """Write the MLflow tracking writes a run kept while its tracking server was unreachable, into the child runs
    they belong to (none is duplicated). Exit 1 if some are still unwritten."""
    from harness.tracking.outbox import replay_pending

    if not run_dir.is_dir():
        err_console.print(f"[red]✗[/red] {run_dir}: no such run directory", highlight=False)
        raise typer.Exit(2)
    try:
        report = replay_pending(run_dir, wait_s=wait)
    except ValueError as exc:  # a damaged spool file: named in the message
        err_console.print(f"[red]✗[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if not report:
        console.print(f"{run_dir}: no kept tracking writes; MLflow is up to date", highlight=False)
    left = 0
    for context, written, unwritten in report:
        left += unwritten
        line = f"{context.tracking_uri} (parent run {context.parent_run_id}): {written} kept writes written"
        if unwritten:
            err_console.print(f"[red]✗[/red] {line}, {unwritten} still unwritten: the server does not answer; "
                              f"retry later, or with --wait SECONDS", highlight=False)
        else:
            console.print(line, highlight=False)
    raise typer.Exit(1 if left else 0)


def _write_report(run_dir: Path, storage=None) -> None:
    """Every run renders its own report; a report failure is reported, and loses no result. With shared storage,
    the whole run directory (report, run.json, sweep study) is then copied there (Tune keeps ``ray/`` there itself)."""
    from harness.report import build_report

    try:
        path = build_report(run_dir)
        console.print(f"report: {path / 'index.html'}", highlight=False)
    except Exception as exc:  # noqa: BLE001
        err_console.print(f"[yellow]report not written: {exc}[/yellow] (retry with `harness report {run_dir}`)",
                          highlight=False)
    if storage is not None:
        from harness.storage import StorageUnavailable

        try:
            storage.upload(run_dir, skip=("ray",))
        except StorageUnavailable as exc:
            err_console.print(f"[red]✗[/red] run not stored: {exc}", highlight=False)
            raise typer.Exit(STORAGE_EXIT) from None
        console.print(f"run stored at {storage.root}", highlight=False)


def _run_on_cluster(command: str, suite, suite_file: Path, cluster_file: Path, *, up: bool, dashboard: str | None,
                    storage: str | None, run_dir: Path | None, runs_root: Path, tracking: bool,
                    tracking_uri: str | None, extra_args: list[str]) -> None:
    """``--cluster``: check everything here, submit ``harness <command>`` as a Ray Job, follow it, bring the run
    back; exits with the job's status (never returns).

    Storage and tracking come from the flags, else from the cluster file's ``metadata.fewshot_harness`` block. A
    cluster whose nodes share this machine's disk (Ray's fake multi-node provider) needs neither: the job writes into
    the local run directory itself. MLflow is written by the job's driver into the run directory (or a server, if one
    is named), so it travels back with the run."""
    from harness import cluster as ray_cluster
    from harness.run import new_run_path
    from harness.storage import RunStorage, StorageError, check_storage_uri, run_key

    def fail(message: str) -> None:
        err_console.print(f"[red]✗[/red] {message}", highlight=False)
        raise typer.Exit(2)

    try:
        target = ray_cluster.load_cluster_file(cluster_file)
    except ray_cluster.ClusterConfigError as exc:
        fail(str(exc))
    settings = target.harness_settings
    storage = storage or settings.storage
    if storage is None and not target.shares_disk:
        fail(f"{cluster_file}: trials on the cluster's worker nodes need storage every node can write (s3://, gs://, "
             f"or file:/// on a file system every node mounts): set {ray_cluster.METADATA_KEY}.storage under "
             f"`metadata:` in {cluster_file}, or pass --storage URI")
    if storage is not None:
        try:
            storage = check_storage_uri(storage)
        except StorageError as exc:
            fail(str(exc))
    uri = None
    if tracking:
        uri = tracking_uri or settings.tracking_uri  # None: the job's run directory holds the store
        if uri is not None:
            from harness.tracking import check_tracking_server

            try:
                check_tracking_server(uri)
            except ConnectionError as exc:
                fail(f"{exc} (the cluster's job writes MLflow there; leave it unset to track into the run directory)")
    local_run = (run_dir or new_run_path(suite, runs_root)).resolve()
    if storage is None:  # the job's nodes share this disk: it writes the local run directory itself
        remote_run = str(local_run)
    else:  # the job's own copy of the run (the stored run is the one that counts), brought back from storage
        remote_run = (f"runs/{suite.name}/{local_run.name}" if target.ships_project else
                      f"{tempfile.gettempdir()}/harness-job-runs/{suite.name}/{local_run.name}")
    try:
        request = ray_cluster.job_request(suite_file, root=ray_cluster.project_root(), storage=storage,
                                          run_dir=remote_run, command=command, tracking=tracking, tracking_uri=uri,
                                          extra_args=extra_args, ship_project=target.ships_project)
        if up:
            console.print(f"bringing up cluster {target.name!r} ({target.provider})", highlight=False)
            ray_cluster.cluster_up(target)
        address = target.dashboard_url(dashboard)
        console.print(f"cluster {target.name!r} ({target.provider}, up to {target.max_workers} workers); "
                      f"dashboard {address}; storage {storage or 'this machine (shared disk)'}", highlight=False)
        job_id, status = ray_cluster.submit_and_follow(
            address, request, echo=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
    except (FileNotFoundError, ConnectionError, ray_cluster.ClusterConfigError) as exc:
        fail(str(exc))
    where = str(local_run)
    if storage is not None:
        stored = RunStorage(storage, run_key(suite.name, local_run))
        try:
            fetched = stored.download("", local_run)
        except Exception as exc:  # noqa: BLE001 - e.g. no credentials for the bucket here: the run is safe in storage
            fetched = False
            err_console.print(f"[yellow]could not fetch {stored.root}: {exc}[/yellow]", highlight=False)
        if fetched:
            from harness.tracking import relocate_store

            relocate_store(local_run)
        else:
            where = stored.root
    console.print(f"Ray Job {job_id}: exit status {status}; run: {where}", highlight=False)
    raise typer.Exit(status)


def _print_summary(run_dir: Path) -> None:
    from harness.results import RESULT_FILE, TrialResult

    from harness.files import DamagedFile

    table = Table("trial", "status", "fit s", "final losses", "metrics")
    for path in sorted(run_dir.glob(f"trials/*/{RESULT_FILE}")):
        try:
            r = TrialResult.load(path)
        except DamagedFile as exc:  # a trial of another suite version left in trials/: named, not a traceback
            table.add_row(path.parent.name, f"[red]damaged[/red]: {exc.problem}", "", "", "")
            continue
        losses = " ".join(f"{k}={v:.3f}" for k, v in r.final_losses.items())
        shown = headline_text(r, limit=len(r.metrics))
        status = {"ok": "[green]ok[/green]", "stopped": f"[yellow]stopped[/yellow]: {r.error}"}.get(
            r.status, f"[red]{r.status}[/red]: {r.error}")
        table.add_row(r.name, status, f"{r.wall_times.get('fit_s', float('nan')):.1f}", losses, shown)
    console.print(table)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
