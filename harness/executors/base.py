"""The executor interface: *where* trials run. Every executor calls :func:`harness.trial.run_trial` with the
callbacks it builds (checkpoint storage, tracking, progress); none changes *what* a trial computes."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from harness.console import RunProgress
    from harness.results import TrialResult
    from harness.storage import RunStorage
    from harness.suite import TrialSpec
    from harness.tracking import TrackingContext


class Executor(abc.ABC):
    """One way of running a suite's trials. ``connect`` reaches the compute before a run directory exists (a clear
    ``ConnectionError`` otherwise) and returns a line saying what it reached; ``close`` releases what ``connect``
    started."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    supports_storage: ClassVar[bool] = False

    def __init__(self, *, address: str | None = None, storage: RunStorage | None = None, verbose: bool = False,
                 max_failures: int = 1) -> None:
        self.address, self.storage, self.verbose, self.max_failures = address, storage, verbose, max_failures

    def connect(self) -> str | None:
        return None

    def close(self) -> None:
        return None

    @abc.abstractmethod
    def run(self, specs: list[TrialSpec], run_dir: Path, *, device: str, tracking: TrackingContext | None,
            progress: RunProgress | None) -> list[TrialResult]:
        """Run ``specs`` (finished ones are kept, not recomputed) and return their results."""
