"""Metric registry and evaluation entry point.

Each metric is registered with ``higher_is_better`` and a one-line description so reports can mark ↑/↓ without
special cases. The evaluators themselves (domain classifier, torch-fidelity bridge, downstream accuracy,
memorisation) are added by the metrics work; until a metric is registered here a suite cannot ask for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.registry import Registry


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool
    description: str
    compute: Callable[..., dict[str, Any]]


METRICS: Registry[MetricSpec] = Registry("metric")
