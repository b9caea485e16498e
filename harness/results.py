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

from harness.metrics.value import MetricValue, metrics_from_json, metrics_to_json

if TYPE_CHECKING:
    from harness.suite import TrialSpec

RESULT_FILE = "result.json"


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
        try:
            metrics = metrics_from_json(data.get("metrics") or {})
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        return cls(**{**data, "metrics": metrics})

    @classmethod
    def load(cls, path: str | Path) -> TrialResult:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, str(path))

    def write(self, trial_dir: Path) -> Path:
        trial_dir.mkdir(parents=True, exist_ok=True)
        path = trial_dir / RESULT_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)  # atomic: a reader never sees half a result
        return path


def trial_dir_for(run_dir: Path, spec: TrialSpec) -> Path:
    return Path(run_dir) / "trials" / f"{spec.name}-{spec.trial_id}"


