"""What a trial produced, as it is written to and read from ``result.json``: the record every executor, the
tracking, the report and the CLI share. Torch-free, so reading results stays light."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    losses: list[dict[str, Any]] = field(default_factory=list)
    final_losses: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    wall_times: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    evaluations: list[dict[str, float]] = field(default_factory=list)  # intermediate: {"step": n, metric: value}

    def headline(self) -> dict[str, float]:
        """Pooled values of the generated samples (no per-class keys, no real-data references)."""
        return {k: float(v["value"]) for k, v in self.metrics.items()
                if "/" not in k and not v.get("reference") and v.get("value") is not None}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def load(cls, path: str | Path) -> TrialResult:
        return cls(**json.loads(Path(path).read_text()))

    def write(self, trial_dir: Path) -> Path:
        trial_dir.mkdir(parents=True, exist_ok=True)
        path = trial_dir / RESULT_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)  # atomic: a reader never sees half a result
        return path


def trial_dir_for(run_dir: Path, spec: TrialSpec) -> Path:
    return Path(run_dir) / "trials" / f"{spec.name}-{spec.trial_id}"


