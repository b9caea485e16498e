"""The metric registry table: what each metric is called, which flat keys it produces, which way each key is better
(or the healthy value it should sit near), and which keys are references of which. Torch-free.

Why a table apart from the computations: the report, the CLI (`harness metrics`, the run summary) and suite
validation need to know *about* metrics — directions, targets, references — on machines and in processes that never
compute one (reading an MLflow store, rebuilding a report). Importing torch for that costs seconds and couples
reading results to the training stack. So:

* a metric is declared where it is computed, with lm-evaluation-harness's ``register_metric`` decorator shape::

      @register_metric("fid", "Fréchet distance ...", Key("fid", LOWER, per_class=True),
                       Key("fid_real_floor", LOWER, per_class=True, reference_of="fid"))
      def compute_fid(ctx): ...

* the module holding those functions (:mod:`harness.metrics.compute`) imports nothing heavy at import time: torch,
  torch-fidelity and the evaluator are imported inside the function bodies, when a metric actually runs;
* this module imports :mod:`harness.metrics.compute` at its end, so importing the table registers every built-in
  metric — and still imports no torch (``tests/test_metrics.py`` checks this in a fresh interpreter).

Every question about a key (its direction, whether it is a reference and of which key) is answered here from the
declarations, never from the key's spelling: :func:`key_spec` maps ``fid_real_floor/class_5`` to the ``fid`` metric's
``fid_real_floor`` declaration and says it is the reference of ``fid/class_5``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.metrics.value import MetricValue

__all__ = [
    "HIGHER", "LOWER", "METRICS", "UNKNOWN", "CollapseRule", "Direction", "Key", "MetricSpec", "MetricTable",
    "class_key", "collapsed", "direction_of", "key_spec", "near_chance", "register_metric", "split_class_key",
    "target",
]

_CLASS_SUFFIX = re.compile(r"^(?P<base>.+)/class_(?P<cls>-?\d+)$")


@dataclass(frozen=True)
class Direction:
    """Which way a key is better: ``higher_is_better`` True/False, or a ``target`` — a healthy value such as
    memorisation's "≈ 1" (below: copying; above: samples unlike the data), which reports mark but never rank."""

    higher_is_better: bool | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        if self.target is not None and self.higher_is_better is not None:
            raise ValueError("a direction is either higher/lower-is-better or a target, not both")

    @property
    def ranked(self) -> bool:
        """Whether "best" means anything: a target is not ranked, nor is an unknown direction."""
        return self.higher_is_better is not None

    @property
    def arrow(self) -> str:
        """The mark a report puts after a key's name: " ↑", " ↓", " (≈ 1)" or nothing."""
        if self.target is not None:
            return f" ({self.target})"
        if self.higher_is_better is None:
            return ""
        return " ↑" if self.higher_is_better else " ↓"

    @property
    def text(self) -> str:
        """For `harness metrics`: "↑ higher", "↓ lower", "≈ 1 (not ranked)"."""
        if self.target is not None:
            return f"{self.target} (not ranked)"
        if self.higher_is_better is None:
            return "–"
        return "↑ higher" if self.higher_is_better else "↓ lower"


HIGHER = Direction(higher_is_better=True)
LOWER = Direction(higher_is_better=False)
UNKNOWN = Direction()


def target(value: str) -> Direction:
    return Direction(target=value)


@dataclass(frozen=True)
class Key:
    """One flat key a metric produces. ``per_class``: also ``<name>/class_<c>`` for every novel class.
    ``reference_of``: the generator key this one is the reference for (it describes real data or a baseline, not the
    generator: ``fid_real_floor`` of ``fid``); the per-class variant is the reference of the same class's key.
    ``baseline``: for a reference that is a baseline method rather than real data, its short name (reports show it
    as the row "<baseline> (baseline)"; real-data references share the row "real data (reference)")."""

    name: str
    direction: Direction
    per_class: bool = False
    reference_of: str | None = None
    baseline: str | None = None

    def __post_init__(self) -> None:
        if self.baseline is not None and self.reference_of is None:
            raise ValueError(f"key {self.name!r}: a baseline must say which key it is the reference of")

    @property
    def reference(self) -> bool:
        return self.reference_of is not None

    @property
    def row(self) -> str | None:
        """The report row of a reference key (None for a generator key)."""
        if self.reference_of is None:
            return None
        return f"{self.baseline} (baseline)" if self.baseline else "real data (reference)"


@dataclass(frozen=True)
class CollapseRule:
    """When one trial's values say its generator collapsed (a failed trial that still produced numbers): declared
    with the metric whose key it reads (``register_metric(..., collapse=near_chance(...))``), so the report, and
    anything else that counts failures, asks the table and never restates a threshold.

    ``key``: the pooled key read; ``fires(value, n_novel_classes) -> bool``; ``text``: the rule in words, for the
    report's notes. A rule looks at one trial alone, on purpose: whether a trial collapsed must not depend on which
    other trials ran beside it (a rule relative to the suite's spread would change verdicts as methods are added,
    and could not be checked when a single trial is reproduced)."""

    key: str
    fires: Callable[[float, int], bool]
    text: str


def near_chance(key: str, factor: float = 1.5) -> CollapseRule:
    """Collapsed when ``key`` (a share of samples the evaluator assigns to their intended class) is at most
    ``factor`` × chance, chance being 1 / the number of novel classes.

    Why this rule: a generator that ignores its class input, or emits one mode or noise, gets about 1 / n of its
    samples "right" (the evaluator's guess lands on the intended class as often as a fixed or random guess among
    the n novel classes would; a guess outside them scores less), whatever the images look like. A working
    generator's samples are recognised far above that: the evaluator is trained to high accuracy on real images of
    every class, so even a blurry but class-faithful generator clears 1.5 / n with room. The factor 1.5 leaves
    room above chance for the sampling noise of a few hundred samples without calling a weak but working generator
    collapsed (with 2 novel classes: 0.75; with 5: 0.3)."""
    def fires(value: float, n_classes: int) -> bool:
        return n_classes > 0 and value <= factor / n_classes

    return CollapseRule(key, fires, f"`{key}` ≤ {factor:g} × chance (1 / number of novel classes)")


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: ``compute(EvaluationContext) -> {flat key: MetricValue}`` and the keys it declares;
    ``collapse``: the rule, if any, by which this metric's value marks a trial as collapsed. ``needs_evaluator``:
    whether it reads the evaluator's logits or features (so that a suite of metrics that do not never trains or
    loads one); ``check(EvaluationConfig)``: raises, before any trial runs, when something the metric reads from disk
    is missing (a weights file), with the message validation shows."""

    name: str
    description: str
    keys: tuple[Key, ...]
    compute: Callable[[Any], dict[str, MetricValue]]
    collapse: CollapseRule | None = None
    needs_evaluator: bool = True
    check: Callable[[Any], object] | None = None

    @property
    def headline(self) -> Key:
        """The metric's own key (the first declared): what `harness metrics` shows the direction of."""
        return self.keys[0]

    @property
    def direction(self) -> Direction:
        return self.headline.direction

    def key(self, name: str) -> Key:
        for key in self.keys:
            if key.name == name:
                return key
        raise KeyError(f"metric {self.name!r} declares no key {name!r} (declared: "
                       f"{', '.join(k.name for k in self.keys)})")

    def measure(self, name: str, value: float, *, std: float | None = None, label: int | None = None,
                n: int | None = None) -> tuple[str, MetricValue]:
        """``(flat key, MetricValue)`` for declared key ``name`` (of novel class ``label``, None: pooled), its
        direction and reference taken from the declaration, so a compute function never restates them."""
        from harness.metrics.value import MetricValue

        key = self.key(name)
        if label is not None and not key.per_class:
            raise ValueError(f"key {name!r} of metric {self.name!r} is not declared per_class")
        reference_of = None if key.reference_of is None else class_key(key.reference_of, label)
        return class_key(name, label), MetricValue(
            value=float(value), std=None if std is None else float(std), metric=self.name, direction=key.direction,
            novel_class=label, reference=key.reference, reference_of=reference_of, n=None if n is None else int(n))

    def run(self, context: Any) -> dict[str, MetricValue]:
        return self.compute(context)

    def describe_keys(self) -> str:
        """Its keys for `harness metrics`: ``fid ↓ (+ /class_<c>), fid_real_floor ↓ (+ /class_<c>; reference of
        fid)``."""
        parts = []
        for key in self.keys:
            notes = [note for note in ("+ /class_<c>" if key.per_class else None,
                                       f"reference of {key.reference_of}" if key.reference_of else None) if note]
            parts.append(f"{key.name}{key.direction.arrow}" + (f" ({'; '.join(notes)})" if notes else ""))
        return ", ".join(parts)


class MetricTable:
    """Metric name → :class:`MetricSpec`. Not a :class:`harness.registry.Registry`: that module builds the method
    registry on import, which imports the method interface and with it torch; this table must stay torch-free. Its
    errors are the registry's (``UnknownNameError`` with "did you mean"), imported only when one is raised."""

    def __init__(self) -> None:
        self._specs: dict[str, MetricSpec] = {}

    def register(self, spec: MetricSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"metric {spec.name!r} is already registered (by "
                             f"{self._specs[spec.name].compute.__module__})")
        self._specs[spec.name] = spec

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> MetricSpec:
        if name not in self._specs:
            from harness.registry import UnknownNameError, did_you_mean

            raise UnknownNameError(f"unknown metric {name!r}{did_you_mean(name, self.names())}; registered: "
                                   f"{', '.join(self.names())}")
        return self._specs[name]


METRICS = MetricTable()


def register_metric(name: str, description: str, *keys: Key, collapse: CollapseRule | None = None,
                    needs_evaluator: bool = True,
                    check: Callable[[Any], object] | None = None) -> Callable[[Callable], Callable]:
    """Declare the function below as metric ``name`` producing ``keys`` (lm-evaluation-harness's
    ``register_metric`` shape). Every ``reference_of`` must name a key of the same metric; a ``collapse`` rule
    reads one of its keys; ``needs_evaluator`` and ``check``: see :class:`MetricSpec`."""
    if not keys:
        raise ValueError(f"metric {name!r} declares no keys")
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ValueError(f"metric {name!r} declares a key twice: {names}")
    for key in keys:
        if key.reference_of is not None and key.reference_of not in names:
            raise ValueError(f"metric {name!r}: key {key.name!r} is the reference of {key.reference_of!r}, which it "
                             f"does not declare")
        if key.reference_of is not None and key.per_class and not next(
                k for k in keys if k.name == key.reference_of).per_class:
            raise ValueError(f"metric {name!r}: per-class key {key.name!r} references {key.reference_of!r}, which "
                             "has no per-class values")

    if collapse is not None and collapse.key not in names:
        raise ValueError(f"metric {name!r}: its collapse rule reads {collapse.key!r}, which it does not declare")

    def decorate(fn: Callable) -> Callable:
        METRICS.register(MetricSpec(name, description, keys, fn, collapse, needs_evaluator, check))
        return fn

    return decorate


def class_key(key: str, label: int | None) -> str:
    """``key`` for novel class ``label`` (``fid/class_5``, a valid MLflow metric name); ``key`` itself for pooled."""
    return key if label is None else f"{key}/class_{label}"


def split_class_key(key: str) -> tuple[str, int | None]:
    """``("fid", 5)`` for ``fid/class_5``, ``("fid", None)`` for ``fid``."""
    match = _CLASS_SUFFIX.match(key)
    return (match["base"], int(match["cls"])) if match else (key, None)


def key_spec(key: str, metric: str | None = None) -> tuple[MetricSpec, Key] | None:
    """The declaration behind flat ``key`` (per-class keys included), or None when no registered metric declares
    it (a result written by a metric since renamed). ``metric``: the registry name stored beside the value, tried
    first."""
    base, label = split_class_key(key)
    candidates = ([metric] if metric in METRICS else []) + [m for m in METRICS.names() if m != metric]
    for name in candidates:
        spec = METRICS.get(name)
        for declared in spec.keys:
            if declared.name == base and (label is None or declared.per_class):
                return spec, declared
    return None


def collapsed(values: Mapping[str, float], n_classes: int) -> bool | None:
    """Whether one trial collapsed, by the collapse rules of the registered metrics: ``values`` is the trial's
    {flat key: value}, ``n_classes`` its number of novel classes. True when any rule whose key has a finite value
    fires, False when at least one such rule was checked and none fired, None (unknown — not "no") when no rule's
    key was computed (e.g. a suite without ``class_consistency``): a report shows that as unknown, never as 0."""
    verdict = None
    for name in METRICS.names():
        rule = METRICS.get(name).collapse
        value = values.get(rule.key) if rule is not None else None
        if value is None or not math.isfinite(float(value)):
            continue
        if rule.fires(float(value), n_classes):
            return True
        verdict = False
    return verdict


def direction_of(key: str, metric: str | None = None) -> Direction | None:
    """The registry's direction of flat ``key`` (None when no metric declares it)."""
    found = key_spec(key, metric)
    return None if found is None else found[1].direction


# Registers the built-in metrics (torch-free at import: see the module docstring). Last, so that the module it
# imports finds every name above defined.
from harness.metrics import compute as _builtin  # noqa: F401
