"""What a run shows on the console, under every executor: a Rich progress line (trials done / running / failed,
elapsed, ETA) and one printed line per finished trial with its headline metrics. Failures are printed, never hidden
behind the bar; each line names the trial so it can be found in ``trials/``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from harness.results import TrialResult


REFERENCE_MARK = "[reference: full data]"  # a `data: full` trial: an oracle upper bound, not a few-shot result


def headline_text(result: TrialResult, limit: int = 6) -> str:
    """The first ``limit`` headline metrics of a finished trial (pooled values of the generated samples), or what a
    stopped trial reached."""
    if result.status == "stopped" and result.evaluations:
        last = result.evaluations[-1]
        return " ".join(f"{k}={v:.3g}" for k, v in last.items() if k != "step") + f" at step {last['step']}"
    from harness.metrics import headline_values  # torch-free: the registry table and typed values

    values = headline_values(result.metrics)
    return " ".join(f"{k}={v:.3g}" for k, v in list(values.items())[:limit])


class RunProgress:
    """Progress of one invocation's trials. ``enabled=False`` prints only the per-trial lines (no live bar)."""

    def __init__(self, total: int, *, console: Console | None = None, enabled: bool = True, done: int = 0) -> None:
        self.console = console or Console()
        self.total, self.enabled = total, enabled
        self.running: set[str] = set()
        self.counts = {"ok": 0, "failed": 0, "stopped": 0}
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=self.console, disable=not enabled, transient=True,
        )
        self._task = self._progress.add_task(self._description(), total=total, completed=done)

    def __enter__(self) -> RunProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _description(self) -> str:
        failed = self.counts["failed"]
        parts = [f"trials: {len(self.running)} running"]
        if failed:
            parts.append(f"[red]{failed} failed[/red]")
        if self.counts["stopped"]:
            parts.append(f"{self.counts['stopped']} stopped")
        return ", ".join(parts)

    def _refresh(self, advance: int = 0) -> None:
        self._progress.update(self._task, description=self._description(), advance=advance)

    def started(self, name: str) -> None:
        self.running.add(name)
        self._refresh()

    def finished(self, result: TrialResult) -> None:
        """One line per finished trial: status, fit time, headline metrics (or the error)."""
        self.running.discard(result.name)
        status = result.status if result.status in self.counts else "failed"
        self.counts[status] += 1
        fit = result.wall_times.get("fit_s")
        timing = f" fit {fit:.0f} s" if fit is not None else ""
        name = escape(result.name) + (f" {escape(REFERENCE_MARK)}" if result.spec.get("data") == "full" else "")
        if status == "ok":
            line = f"[green]✓[/green] {name}{timing}  {escape(headline_text(result))}"
        elif status == "stopped":
            line = f"[yellow]■[/yellow] {name} stopped early{timing}  {escape(headline_text(result))}"
        else:
            line = f"[red]✗ {name} failed[/red]: {escape(str(result.error))}"
        self.console.print(line, highlight=False, soft_wrap=True)
        self._refresh(advance=1)

    def lost(self, name: str, error: str) -> None:
        """A trial that ended without a result file (e.g. its worker died on every retry)."""
        self.running.discard(name)
        self.counts["failed"] += 1
        self.console.print(f"[red]✗ {escape(name)} failed[/red] (no result written): {escape(error)}",
                           highlight=False, soft_wrap=True)
        self._refresh(advance=1)


class DecodeProgress:
    """A transient bar while ``harness validate`` (or ``harness run``, before it starts) decodes a dataset's images;
    pass the instance as the ``progress`` callback of :func:`harness.suite.check_images`. The bar appears only
    for at least :attr:`MIN_FILES` files to decode, so a small or already checked (cached) folder prints nothing."""

    MIN_FILES = 200

    def __init__(self, console: Console | None = None, *, enabled: bool = True) -> None:
        self.console = console or Console()
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> DecodeProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < self.MIN_FILES:
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True,
            )
            self._task = self._progress.add_task("decoding images", total=total)
            self._progress.start()
        self._progress.update(self._task, completed=done)
