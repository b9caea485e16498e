"""Metrics: the registry table, typed values, and ``evaluate``, the entry point ``harness.trial.run_trial`` calls.

A suite lists registry names in ``evaluation.metrics``; `harness metrics` prints the table
(:mod:`harness.metrics.table`: each metric's keys, their direction or target, and which keys are references of
which). The metrics themselves are declared and computed in :mod:`harness.metrics.compute`::

    name               keys (direction)                                                       needs
    is                 is ↑ (± std over splits), is_real ↑ (reference)                        evaluator logits
    fid                fid ↓, fid/class_<c> ↓, fid_real_floor ↓, fid_real_floor/class_<c> ↓   evaluator features
    kid                kid ↓, kid/class_<c> ↓ (± std over subsets)                            evaluator features
    prc                precision ↑, recall ↑, f_score ↑ (+ /class_<c>)                        evaluator features
    class_consistency  class_consistency ↑ (+ /class_<c>), class_consistency_real ↑            domain classifier
    accuracy           accuracy ↑, accuracy_real_only ↑, accuracy_classic_aug ↑ (± std)       a small CNN per seed
    memorisation       memorisation ≈ 1 (+ /class_<c>), memorisation_close_share ↓ (+ /class_<c>) evaluator features
    diversity          diversity_features ↑, intra_cluster_features ↑, diversity_pixel ↑,      evaluator features,
                       intra_cluster_pixel ↑ (+ /class_<c>, each beside its *_real reference)  pixels
    lpips_diversity    diversity_lpips ↑, intra_cluster_lpips ↑ (+ /class_<c>, + *_real)       LPIPS weights files
    ndb                ndb ↓, ndb_js ↓, ndb_real ↓, ndb_js_real ↓ (references)                pixels, k-means

``evaluate`` takes the evaluation config and the data — not a trial spec: a metric needs nothing else of the trial
(its seeds come from the split). It rounds the samples to the 8-bit levels ``samples.pt`` keeps (so a trial's scores
and those `harness evaluate` computes from its saved samples are the same numbers), extracts their logits and
features once, takes the held-out reference from the cache, and runs the requested metrics. This package imports no
torch until ``evaluate`` runs, so that suite validation, reports and the CLI stay light.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.metrics.config import EvaluationConfig
from harness.metrics.table import METRICS, Direction, Key, MetricSpec, register_metric
from harness.metrics.value import MetricValue, headline_values

if TYPE_CHECKING:
    import torch

    from harness.api import LabeledImages
    from harness.data import Dataset, FewShotSplit
    from harness.metrics.evaluator import DomainClassifierSettings

__all__ = ["METRICS", "Direction", "Evaluation", "EvaluationConfig", "Key", "MetricSpec", "MetricValue",
           "check_evaluator", "evaluate", "headline_values", "prepare_evaluators", "register_metric"]


@dataclass
class Evaluation:
    """``metrics``: flat key → :class:`MetricValue`; ``provenance``: evaluator name, hash, test accuracy and cache
    status, reference cache hit/miss, timings."""

    metrics: dict[str, MetricValue] = field(default_factory=dict)
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
    """Raise a clear error when ``config``'s evaluator, or a file a requested metric reads (LPIPS's weights), is
    missing here; call before any trial runs. The error's ``field`` names the suite field. See
    :func:`harness.metrics.evaluator.check_evaluator` and each metric's declared ``check``."""
    from harness.metrics.evaluator import check_evaluator as _check

    path = _check(config)
    for name in dict.fromkeys(config.metrics):
        if name in METRICS and METRICS.get(name).check is not None:
            METRICS.get(name).check(config)
    return path


def needs_evaluator(config: EvaluationConfig) -> bool:
    """Whether any requested metric reads the evaluator's logits or features (as declared with the metric: downstream
    accuracy trains its own classifier, NDB and LPIPS read pixels)."""
    return any(METRICS.get(name).needs_evaluator for name in config.metrics if name in METRICS)


def prepare_evaluators(evaluations: Iterable[tuple[EvaluationConfig, Dataset]],
                       device: torch.device | str = "cpu") -> None:
    """Train (or load) each evaluator that the given (evaluation config, dataset) pairs need, once, in the driver:
    trials then find it in the cache instead of racing to train it."""
    from harness.metrics.evaluator import get_evaluator

    done: set[tuple[int, str]] = set()
    for config, dataset in evaluations:
        key = (id(dataset), config.evaluator)
        if needs_evaluator(config) and key not in done:
            done.add(key)
            get_evaluator(config, dataset, device)


def evaluate(
    config: EvaluationConfig,
    dataset: Dataset,
    split: FewShotSplit,
    samples: LabeledImages,
    device: torch.device | str = "cpu",
    *,
    cache_root: str | Path | None = None,
    evaluator_settings: DomainClassifierSettings | None = None,
) -> Evaluation:
    """Compute ``config.metrics`` for ``samples`` (class-major, CPU) of ``split``'s novel classes.

    ``cache_root`` overrides ``$FEWSHOT_CACHE`` for the evaluator, reference and baseline caches;
    ``evaluator_settings`` the domain classifier's architecture/training (tests use tiny ones).
    """
    import torch

    from harness.api import LabeledImages
    from harness.metrics.context import EvaluationContext
    from harness.metrics.evaluator import quantise

    started = time.perf_counter()
    names = list(dict.fromkeys(config.metrics))
    specs = [METRICS.get(name) for name in names]  # unknown names fail before any work
    classes = tuple(split.task.novel_classes)
    got = samples.classes
    if set(got) != set(classes):
        raise ValueError(f"samples must cover exactly the novel classes {classes}, got classes {got}")
    samples = LabeledImages(quantise(samples.images.cpu()), samples.labels.cpu())  # what samples.pt keeps
    context = EvaluationContext(config, dataset, split, samples, torch.device(device),
                                cache_root=cache_root, evaluator_settings=evaluator_settings)
    check_evaluator(config)
    metrics: dict[str, MetricValue] = {}
    seconds: dict[str, float] = {}
    with _blas_threads(torch.get_num_threads()):
        if needs_evaluator(config):
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
