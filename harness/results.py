"""What a trial produced, as it is written to and read from ``result.json``: the record every executor, the
tracking, the report and the CLI share. Torch-free, so reading results stays light.

Metric values are :class:`~harness.metrics.value.MetricValue` in memory and keep their long-standing JSON form on
disk (plus ``reference_of``), so ``result.json`` files of earlier versions load too.

``metrics`` are the trial's current values. Re-scoring (`harness evaluate`, :mod:`harness.rescore`) never loses
earlier ones: ``metric_versions`` lists every evaluation of the trial's samples — version 1 the trial's own, then one
per re-scoring — each with its evaluator, the evaluator's hash, the sample count, the metrics asked for and the values
they gave (:meth:`TrialResult.version_values`)."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.files import DamagedFile, read_json, write_text
from harness.metrics.value import MetricValue, metrics_from_json, metrics_to_json

if TYPE_CHECKING:
    from harness.suite import TrialSpec

RESULT_FILE = "result.json"
CHECKPOINT_FILE = "checkpoint.pt"  # an in-process trial's latest resumable state (harness.trial.FileCheckpoint)
STATUSES = ("running", "ok", "failed", "stopped")
# the type each field must have on disk: a result.json edited or damaged into another shape is named, not half-used
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "trial_id": str, "name": str, "status": str, "spec": dict, "metrics": dict, "losses": list, "final_losses": dict,
    "provenance": dict, "wall_times": dict, "artifacts": dict, "error": (str, type(None)), "evaluations": list,
    "metric_versions": list,
}


def recompute_advice(trial_dir: str | Path) -> str:
    """What to do about a damaged result: the two ways that never lose a finished result silently."""
    name = Path(trial_dir).name
    return (f"run the suite again with `--recompute {name}` to set the file aside and compute that trial again, or "
            f"move the file away yourself")


@dataclass
class TrialResult:
    """What one trial produced; written as ``result.json`` in its trial directory."""

    trial_id: str
    name: str
    status: str  # "ok", "failed" or "stopped" (early, by a sweep's scheduler)
    spec: dict[str, Any]
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    losses: list[dict[str, Any]] = field(default_factory=list)
    final_losses: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    wall_times: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    evaluations: list[dict[str, float]] = field(default_factory=list)  # intermediate: {"step": n, metric: value}
    metric_versions: list[dict[str, Any]] = field(default_factory=list)  # see the module docstring

    def version_values(self, version: int) -> dict[str, MetricValue]:
        """The values metrics version ``version`` computed (1: the trial's own); ``KeyError`` if there is none."""
        for entry in self.metric_versions:
            if entry.get("version") == version:
                return metrics_from_json(entry.get("values") or {})
        if version == 1 and not self.metric_versions:  # never re-scored: the current values are the trial's own
            return dict(self.metrics)
        raise KeyError(f"trial {self.name}: no metrics version {version} (has "
                       f"{[e.get('version') for e in self.metric_versions] or [1]})")

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (metric values as plain objects)."""
        out = asdict(self)  # metric values become their dataclass fields here, and are replaced just below
        out["metrics"] = metrics_to_json(self.metrics)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "result") -> TrialResult:
        """The inverse of :meth:`to_dict`; ``source`` (a file name) is named in the ``ValueError`` bad input gets."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {', '.join(unknown)}")
        missing = sorted(f.name for f in fields(cls) if f.name not in data
                         and f.default is MISSING and f.default_factory is MISSING)
        if missing:
            raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
        wrong = [f"{key} (a {type(data[key]).__name__})" for key, kind in _FIELD_TYPES.items()
                 if key in data and not isinstance(data[key], kind)]
        if wrong:
            raise ValueError(f"{source}: field(s) of the wrong type: {', '.join(wrong)}")
        if data["status"] not in STATUSES:
            raise ValueError(f"{source}: status {data['status']!r} is not one of {', '.join(STATUSES)}")
        try:
            metrics = metrics_from_json(data.get("metrics") or {})
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        return cls(**{**data, "metrics": metrics})

    @classmethod
    def load(cls, path: str | Path) -> TrialResult:
        """The result in ``path``; :class:`DamagedFile` (naming the file, with :func:`recompute_advice`) when it is
        not a result: cut short, not JSON, a field missing or of the wrong type."""
        path = Path(path)
        advice = recompute_advice(path.parent)
        data = read_json(path, advice=advice)
        try:
            return cls.from_dict(data, str(path))
        except ValueError as exc:
            problem = str(exc).removeprefix(f"{path}: ")
            raise DamagedFile(path, problem, advice) from None

    @classmethod
    def parse(cls, text: str, source: str) -> TrialResult:
        """:meth:`load` for a result read from somewhere else (shared storage): ``source`` names it in the error."""
        advice = recompute_advice(Path(source).parent)
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DamagedFile(source, f"is not valid JSON, cut short or overwritten ({exc})", advice) from None
        try:
            return cls.from_dict(data, source)
        except ValueError as exc:
            raise DamagedFile(source, str(exc).removeprefix(f"{source}: "), advice) from None

    def write(self, trial_dir: Path) -> Path:
        return write_text(Path(trial_dir) / RESULT_FILE, self.to_json())  # atomic: never half a result


def trial_dir_for(run_dir: Path, spec: TrialSpec) -> Path:
    return Path(run_dir) / "trials" / f"{spec.name}-{spec.trial_id}"


