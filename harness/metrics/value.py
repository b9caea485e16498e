"""``MetricValue``: one computed metric value, typed, and its JSON form in ``result.json``. Torch-free.

The JSON form is the one results have always had — ``{"value", "std", "higher_is_better", "metric", "class",
"reference", "n"}`` — plus ``"reference_of"`` (the key a reference value stands beside). Results written before
``reference_of`` existed still load: the key it references is then taken from the registry's declarations
(:mod:`harness.metrics.table`), never guessed from the key's spelling; so is the direction of every registered key
(old results stored memorisation as higher-is-better; the registry says its target is ≈ 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.metrics.table import UNKNOWN, Direction, class_key, key_spec, split_class_key

__all__ = ["MetricValue", "headline_values", "metrics_from_json", "metrics_to_json"]

_JSON_FIELDS = ("value", "std", "higher_is_better", "metric", "class", "reference", "reference_of", "n")


@dataclass(frozen=True)
class MetricValue:
    """``value`` (± ``std`` over splits, subsets or classifier seeds, when the metric has one) of registry metric
    ``metric`` for novel class ``novel_class`` (None: pooled over the novel classes), computed from ``n`` images.
    ``reference``: the value describes real data or a baseline, not the generator; ``reference_of`` names the
    generator key it stands beside (None for a reference no registered metric declares). ``direction`` comes from
    the registry."""

    value: float
    metric: str | None
    direction: Direction = UNKNOWN
    std: float | None = None
    novel_class: int | None = None
    reference: bool = False
    reference_of: str | None = None
    n: int | None = None

    def __post_init__(self) -> None:
        if self.reference_of is not None and not self.reference:
            raise ValueError(f"a value with reference_of={self.reference_of!r} must be a reference")

    @property
    def headline(self) -> bool:
        """Pooled over the novel classes and describing the generator: what a one-line summary shows."""
        return self.novel_class is None and not self.reference

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "std": self.std, "higher_is_better": self.direction.higher_is_better,
                "metric": self.metric, "class": self.novel_class, "reference": self.reference,
                "reference_of": self.reference_of, "n": self.n}

    @classmethod
    def from_json(cls, key: str, data: Mapping[str, Any]) -> MetricValue:
        """The value stored under flat ``key``; raises ``ValueError`` naming the key and field on bad input."""
        if not isinstance(data, Mapping):
            raise ValueError(f"metric {key!r}: expected an object with {', '.join(_JSON_FIELDS)}, got {data!r}")
        unknown = sorted(set(data) - set(_JSON_FIELDS))
        if unknown:
            raise ValueError(f"metric {key!r}: unknown field(s) {', '.join(unknown)}")
        value = _number(key, "value", data.get("value"))
        if value is None:
            raise ValueError(f"metric {key!r}: field 'value' is missing or null")
        metric = data.get("metric")
        declared = key_spec(key, metric)
        reference = bool(data.get("reference", False))
        if declared is not None:  # the registry's word on direction and reference
            spec, declaration = declared
            metric, direction = spec.name, declaration.direction
            reference_of = (None if declaration.reference_of is None
                            else class_key(declaration.reference_of, split_class_key(key)[1]))
            reference = declaration.reference
        else:
            stored = data.get("higher_is_better")
            direction = Direction(higher_is_better=None if stored is None else bool(stored))
            reference_of = data.get("reference_of") if reference else None
        return cls(value=value, metric=metric, direction=direction, std=_number(key, "std", data.get("std")),
                   novel_class=_integer(key, "class", data.get("class")), reference=reference,
                   reference_of=reference_of, n=_integer(key, "n", data.get("n")))


def _number(key: str, field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metric {key!r}: field {field!r} must be a number, got {value!r}")
    return float(value)


def _integer(key: str, field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"metric {key!r}: field {field!r} must be an integer, got {value!r}")
    return value


def metrics_to_json(metrics: Mapping[str, MetricValue]) -> dict[str, dict[str, Any]]:
    return {key: value.to_json() for key, value in metrics.items()}


def metrics_from_json(data: Mapping[str, Any]) -> dict[str, MetricValue]:
    return {key: MetricValue.from_json(key, entry) for key, entry in data.items()}


def headline_values(metrics: Mapping[str, MetricValue] | Iterable[tuple[str, MetricValue]]) -> dict[str, float]:
    """``{key: value}`` of the headline values — pooled over the novel classes, describing the generator (no
    per-class breakdown, no real-data or baseline references) — in their stored order. What the run summary, the
    intermediate evaluations of a sweep and progress displays show: the references do not change while a method
    trains, and per-class values would drown the line."""
    items = metrics.items() if isinstance(metrics, Mapping) else metrics
    return {key: value.value for key, value in items if value.headline}
