"""One invocation of a suite: its run directory, which trials still need running, and the summary.

A run directory is used by one invocation at a time: :meth:`RunDir.create` takes an exclusive lock on
``<run dir>/.lock`` (POSIX ``flock``, released by the kernel when the process ends, however it ends), so a second
``harness run`` on the same ``--run-dir`` refuses with a message naming the first instead of interleaving its
trials, checkpoints and MLflow runs with it.

Before any trial runs, :meth:`RunDir.check_results` reads back every finished trial's ``result.json``: a damaged one
(cut short, edited into another shape) is reported by path — the run does not start, nothing is recomputed
silently — unless ``--recompute`` names its trial, which sets the file aside (renamed, never deleted) and runs it
again.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import logging
import os
import shlex
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from harness.files import DamagedFile, read_json_object, set_aside, write_json, write_text
from harness.runtime import git_commit, package_versions
from harness.suite import Suite, TrialSpec, suite_hash
from harness.results import CHECKPOINT_FILE, RESULT_FILE, TrialResult, trial_dir_for

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
TUNE_EXPERIMENT_DIR = "ray/tune"  # harness.executors.ray_tune.EXPERIMENT under the run directory


class RunDirBusy(RuntimeError):
    """Another invocation holds the run directory's lock."""


class DamagedResults(ValueError):
    """Finished trials whose ``result.json`` cannot be read back; the message lists each file and what to do."""

    def __init__(self, damaged: list[DamagedFile]) -> None:
        self.damaged = damaged
        shown = damaged[:20]
        lines = [f"  {d.path}: {d.problem}" for d in shown]
        if len(damaged) > len(shown):
            lines.append(f"  … and {len(damaged) - len(shown)} more")
        names = " ".join(f"--recompute {d.path.parent.name}" for d in shown[:3])
        super().__init__(
            f"{len(damaged)} finished trial result(s) cannot be read back, so this run would not know whether they "
            f"finished:\n" + "\n".join(lines) + f"\nNothing was run. Run the same command with {names}"
            f"{' …' if len(damaged) > 3 else ''} to set each damaged file aside (kept, renamed) and compute the trial "
            "again, or move the files away yourself.")


def new_run_path(suite: Suite, root: Path = Path("runs")) -> Path:
    """``root/<suite>/<timestamp>`` (with a counter if taken); not created."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = root / suite.name / stamp, 1
    while path.exists():
        path, n = root / suite.name / f"{stamp}-{n}", n + 1
    return path


def lock_run_dir(path: Path) -> IO[str]:
    """Take ``path``'s run lock (the open lock file: keep it open while the run lasts) or raise :class:`RunDirBusy`
    naming the invocation that holds it. Without ``fcntl`` (Windows) no lock is taken."""
    handle = open(Path(path) / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole invocation
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        try:
            who = json.loads(holder)
            holder = (f"pid {who.get('pid')} on {who.get('host')}, started {who.get('started')}: "
                      f"{who.get('command')}")
        except ValueError:
            holder = holder or "an unknown process"
        raise RunDirBusy(f"{path} is in use by another harness invocation ({holder}). Two invocations on one run "
                         "directory would interleave their trials; wait for it to finish, stop it, or pass another "
                         "--run-dir.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(sys.argv),
                             "started": dt.datetime.now().isoformat(timespec="seconds")}))
    handle.flush()
    return handle


@dataclass
class RunDir:
    path: Path
    suite: Suite
    _lock: IO[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def create(cls, suite: Suite, suite_file: Path, root: Path = Path("runs"), path: Path | None = None) -> RunDir:
        """A new ``root/<suite>/<timestamp>`` directory, or ``path`` (reused: finished trials are kept), locked for
        this invocation (:func:`lock_run_dir`; :meth:`close` or the process's end releases it)."""
        path = path or new_run_path(suite, root)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, suite, lock_run_dir(path))
        try:
            run._write_records(suite_file)
        except BaseException:
            run.close()
            raise
        return run

    def _write_records(self, suite_file: Path) -> None:
        path, suite = self.path, self.suite
        existing = path / RUN_FILE
        if existing.exists():
            try:
                previous = read_json_object(existing)
            except DamagedFile as exc:  # derived: rewritten below; the trials' own results say what they ran
                kept = set_aside(existing, "damaged")
                log.warning("%s; it is rewritten (the damaged file is kept as %s). Finished trials are still "
                            "matched by their trial ids.", exc, kept.name)
            else:
                if previous.get("suite_hash") != suite_hash(suite):
                    raise ValueError(
                        f"{path} holds a run of a different suite (hash {previous.get('suite_hash')} != "
                        f"{suite_hash(suite)}); use a new --run-dir"
                    )
        write_text(path / "suite.yaml", yaml.safe_dump(suite.model_dump(mode="json", by_alias=True), sort_keys=False))
        write_json(existing, {
            "suite": suite.name,
            "suite_file": str(suite_file),
            "suite_hash": suite_hash(suite),
            "suite_version": suite.version,
            "command": shlex.join(sys.argv),
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "versions": package_versions(),
        }, sort_keys=False)

    def close(self) -> None:
        """Release the run lock (idempotent)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def finished(self, spec: TrialSpec) -> TrialResult | None:
        """The stored result of ``spec`` if it completed in an earlier invocation."""
        return finished_result(self.path, spec)

    def check_results(self, specs: list[TrialSpec], recompute: list[str] = ()) -> list[Path]:
        """Read back every stored ``result.json`` of ``specs`` before anything runs.

        ``recompute`` names trials (directory name, trial name or trial id) to compute again whatever their result
        says: their result, in-process checkpoint and — Tune keeps a finished trial finished in its experiment
        state — the run's Tune experiment are set aside (renamed, kept), and the executors then re-run exactly the
        trials without a result. Raises :class:`DamagedResults` for damaged results not named, ``ValueError`` for
        a name that matches no trial. Returns the files set aside."""
        chosen = _match_trials(specs, recompute, self.path)
        damaged: list[DamagedFile] = []
        aside: list[Path] = []
        for spec in specs:
            trial_dir = trial_dir_for(self.path, spec)
            if spec.trial_id in chosen:
                for name in (RESULT_FILE, CHECKPOINT_FILE):
                    if (trial_dir / name).exists():
                        aside.append(set_aside(trial_dir / name, "recompute"))
                continue
            if (trial_dir / RESULT_FILE).exists():
                try:
                    TrialResult.load(trial_dir / RESULT_FILE)
                except DamagedFile as exc:
                    damaged.append(exc)
        if damaged:
            raise DamagedResults(damaged)
        experiment = self.path / TUNE_EXPERIMENT_DIR
        if chosen and experiment.exists():
            aside.append(set_aside(experiment, "recompute"))
        for path in aside:
            log.warning("set aside for --recompute: %s", path.relative_to(self.path))
        return aside


def _match_trials(specs: list[TrialSpec], names: list[str], run_dir: Path) -> set[str]:
    """The trial ids ``names`` select (each a trial directory name, trial name or trial id); ``ValueError`` naming
    an unknown name, with the closest ones."""
    by_name: dict[str, set[str]] = {}
    for spec in specs:
        for key in (trial_dir_for(run_dir, spec).name, spec.name, spec.trial_id):
            by_name.setdefault(key, set()).add(spec.trial_id)
    chosen: set[str] = set()
    for name in names:
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=3)
            raise ValueError(f"--recompute {name!r} names no trial of this suite"
                             + (f"; did you mean {', '.join(close)}?" if close else
                                " (give a trial directory name under trials/, a trial name or a trial id)"))
        chosen |= by_name[name]
    return chosen


def finished_result(run_dir: Path, spec: TrialSpec) -> TrialResult | None:
    """The result ``spec`` left in ``run_dir`` if it completed (status ok, same trial id), else None.
    :class:`DamagedFile` when the file is damaged (checked before a run by :meth:`RunDir.check_results`)."""
    path = trial_dir_for(run_dir, spec) / RESULT_FILE
    if not path.exists():
        return None
    result = TrialResult.load(path)
    return result if result.status == "ok" and result.trial_id == spec.trial_id else None
