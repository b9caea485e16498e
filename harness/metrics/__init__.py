"""Metric registry and evaluation entry point.

Each metric is registered with ``higher_is_better`` and a one-line description so reports can mark ↑/↓ without
special cases; ``keys`` lists the flat result keys it produces (``/class_<id>`` marks per-novel-class keys), each of
which carries its own ``higher_is_better``. A suite lists registry names in ``evaluation.metrics``::

    name               keys (direction)                                                       needs
    is                 is ↑ (± std over splits), is_real ↑ (reference)                        evaluator logits
    fid                fid ↓, fid/class_<c> ↓, fid_real_floor ↓, fid_real_floor/class_<c> ↓   evaluator features
    kid                kid ↓, kid/class_<c> ↓ (± std over subsets)                            evaluator features
    prc                precision ↑, recall ↑, f_score ↑ (+ /class_<c>)                        evaluator features
    class_consistency  class_consistency ↑ (+ /class_<c>), class_consistency_real ↑            domain classifier
    accuracy           accuracy ↑, accuracy_real_only ↑, accuracy_classic_aug ↑ (± std)       a small CNN per seed
    memorisation       memorisation ↑ (+ /class_<c>), memorisation_close_share ↓ (+ /class_<c>) evaluator features

``evaluate`` (called by ``harness.trial.run_trial``) extracts the samples' logits and features once, takes the
held-out reference from the cache, and runs the requested metrics. Heavy modules (torch-fidelity, the evaluator)
are imported on first use so that suite validation stays light.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.registry import Registry

if TYPE_CHECKING:
    from harness.api import LabeledImages
    from harness.data import Dataset, FewShotSplit
    from harness.metrics.evaluator import DomainClassifierSettings
    from harness.suite import EvaluationConfig, TrialSpec

__all__ = ["METRICS", "Evaluation", "MetricSpec", "check_evaluator", "evaluate"]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric. ``compute`` is a function ``(EvaluationContext) -> {key: value}`` or its lazy
    ``"module:function"`` path; ``keys`` documents the keys it produces."""

    name: str
    higher_is_better: bool
    description: str
    compute: Callable[..., dict[str, Any]] | str
    keys: tuple[str, ...] = ()
    target: str | None = None  # a healthy value rather than a direction (reports do not rank it)

    def run(self, context: Any) -> dict[str, dict[str, Any]]:
        fn = self.compute
        if isinstance(fn, str):
            module, _, attr = fn.partition(":")
            fn = getattr(importlib.import_module(module), attr)
        return fn(context)


METRICS: Registry[MetricSpec] = Registry("metric")

_C = "harness.metrics.compute"
for _spec in (
    MetricSpec("is", True, "Inception Score of the pooled novel-class samples (evaluator logits), beside the real "
               "held-out images' IS (is_real)", f"{_C}:compute_is", ("is", "is_real")),
    MetricSpec("fid", False, "Fréchet distance of evaluator features to held-out real images, per class and pooled, "
               "beside the real-vs-real floor of two held-out halves (fid_real_floor)", f"{_C}:compute_fid",
               ("fid", "fid/class_<c>", "fid_real_floor", "fid_real_floor/class_<c>")),
    MetricSpec("kid", False, "Kernel Inception Distance (polynomial kernel, evaluator features), per class and pooled",
               f"{_C}:compute_kid", ("kid", "kid/class_<c>")),
    MetricSpec("prc", True, "precision, recall and F-score of the samples' feature manifold against held-out real "
               "images (k-NN balls), per class and pooled", f"{_C}:compute_prc",
               ("precision", "recall", "f_score", "precision/class_<c>", "recall/class_<c>", "f_score/class_<c>")),
    MetricSpec("class_consistency", True, "share of samples of class c the domain classifier assigns to c, beside its "
               "accuracy on held-out real images (class_consistency_real)", f"{_C}:compute_class_consistency",
               ("class_consistency", "class_consistency/class_<c>", "class_consistency_real")),
    MetricSpec("accuracy", True, "held-out accuracy of a classifier trained on the k shots + samples, beside real-only "
               "and classic-augmentation baselines (mean ± std over seeds)", f"{_C}:compute_accuracy",
               ("accuracy", "accuracy_real_only", "accuracy_classic_aug")),
    MetricSpec("memorisation", True, "median nearest-shot distance of samples / that of held-out real images "
               "(≈1 no copying, ≪1 copying), and the share of samples closer than the 5 % real quantile",
               f"{_C}:compute_memorisation",
               ("memorisation", "memorisation/class_<c>", "memorisation_close_share",
                "memorisation_close_share/class_<c>"), target="≈ 1"),
):
    METRICS.register(_spec.name, _spec)


@dataclass
class Evaluation:
    """``metrics``: flat key → value dict (see :mod:`harness.metrics.compute`); ``provenance``: evaluator name, hash,
    test accuracy and cache status, reference cache hit/miss, timings."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _blas_threads(count: int):
    """numpy's BLAS (FID's covariances and eigenvalues) limited to torch's thread count: on a busy machine, BLAS
    threads beyond the trial's CPU share wait for each other."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (mlxtend)
        yield
        return
    with threadpool_limits(limits=count, user_api="blas"):
        yield


def check_evaluator(config: EvaluationConfig) -> Path | None:
    """Raise a clear error when ``config``'s evaluator cannot be built here (InceptionV3 weights file missing);
    call before any trial runs. See :func:`harness.metrics.evaluator.check_evaluator`."""
    from harness.metrics.evaluator import check_evaluator as _check

    return _check(config)


def prepare_evaluators(specs: list[TrialSpec], datasets: dict[str, Dataset], device: torch.device | str = "cpu") -> None:
    """Train (or load) each evaluator the trials need, once, in the driver: trials then find it in the cache instead
    of racing to train it. ``datasets`` maps ``spec.dataset.model_dump_json()`` to the loaded dataset."""
    from harness.metrics.evaluator import get_evaluator

    done: set[tuple[str, str]] = set()
    for spec in specs:
        if not spec.evaluation.metrics or spec.evaluation.metrics == ["accuracy"]:
            continue
        key = (spec.dataset.model_dump_json(), spec.evaluation.evaluator)
        if key not in done:
            done.add(key)
            get_evaluator(spec.evaluation, datasets[key[0]], device)


def evaluate(
    spec: TrialSpec,
    dataset: Dataset,
    split: FewShotSplit,
    samples: LabeledImages,
    device: torch.device | str = "cpu",
    *,
    cache_root: str | Path | None = None,
    evaluator_settings: DomainClassifierSettings | None = None,
) -> Evaluation:
    """Compute ``spec.evaluation.metrics`` for ``samples`` (class-major, CPU) of ``split``'s novel classes.

    ``cache_root`` overrides ``$FEWSHOT_CACHE`` for the evaluator, reference and baseline caches;
    ``evaluator_settings`` the domain classifier's architecture/training (tests use tiny ones).
    """
    from harness.metrics.compute import EvaluationContext

    started = time.perf_counter()
    names = list(dict.fromkeys(spec.evaluation.metrics))
    specs = [METRICS.get(name) for name in names]  # unknown names fail before any work
    classes = tuple(split.task.novel_classes)
    got = samples.classes
    if set(got) != set(classes):
        raise ValueError(f"samples must cover exactly the novel classes {classes}, got classes {got}")
    context = EvaluationContext(spec, dataset, split, samples.to("cpu"), torch.device(device),
                                cache_root=cache_root, evaluator_settings=evaluator_settings)
    if spec.evaluation.evaluator == "inception_v3":
        check_evaluator(spec.evaluation)
    metrics: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    with _blas_threads(torch.get_num_threads()):
        if any(name != "accuracy" for name in names):
            t0 = time.perf_counter()
            context.evaluator  # noqa: B018 - load or train it first, so its time is not charged to a metric
            seconds["evaluator"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            context.reference  # noqa: B018
            seconds["reference"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            context.features  # noqa: B018
            seconds["extract"] = time.perf_counter() - t0
        for metric in specs:
            t0 = time.perf_counter()
            metrics.update(metric.run(context))
            seconds[metric.name] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    provenance = {"evaluator": None, **context.provenance,
                  "metric_seconds": {k: round(v, 4) for k, v in seconds.items()}}
    return Evaluation(metrics, provenance)
