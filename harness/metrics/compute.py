"""What each registered metric computes from one trial's samples; every function returns flat keys → values.

A value is ``{"value": float, "std": float | None, "higher_is_better": bool, "metric": <registry name>,
"class": <novel class id> | None (pooled), "reference": bool, "n": <images it is computed from>}``. ``reference``
marks values that describe real data or a baseline (``is_real``, ``fid_real_floor``, ``accuracy_real_only``...), not
the generator. Per-class keys are ``<key>/class_<id>`` (valid MLflow metric names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from harness.api import LabeledImages
    from harness.data import Dataset, FewShotSplit
    from harness.metrics.evaluator import DomainClassifierSettings, Evaluator
    from harness.metrics.reference import Reference
    from harness.suite import EvaluationConfig, TrialSpec

Values = dict[str, dict[str, Any]]


def class_key(key: str, label: int) -> str:
    return f"{key}/class_{label}"


def value(v: float, *, metric: str, higher: bool, std: float | None = None, label: int | None = None,
          reference: bool = False, n: int | None = None) -> dict[str, Any]:
    return {
        "value": float(v),
        "std": None if std is None else float(std),
        "higher_is_better": higher,
        "metric": metric,
        "class": label,
        "reference": reference,
        "n": n,
    }


@dataclass(eq=False)
class EvaluationContext:
    """One trial's samples and everything the metrics compute from; the evaluator, the reference and the samples'
    (logits, features) are built on first use and then shared by every metric."""

    spec: TrialSpec
    dataset: Dataset
    split: FewShotSplit
    samples: LabeledImages
    device: torch.device
    cache_root: str | Path | None = None
    evaluator_settings: DomainClassifierSettings | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> EvaluationConfig:
        return self.spec.evaluation

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(self.split.task.novel_classes)

    @cached_property
    def evaluator(self) -> Evaluator:
        from harness.metrics.evaluator import get_evaluator

        evaluator = get_evaluator(self.config, self.dataset, self.device, cache_root=self.cache_root,
                                  settings=self.evaluator_settings)
        self.provenance.update(evaluator.provenance())
        return evaluator

    @cached_property
    def reference(self) -> Reference:
        from harness.metrics.reference import get_reference

        reference = get_reference(self.split, self.evaluator, cache_root=self.cache_root)
        self.provenance.update(reference_cache=reference.cache_status, reference_key=reference.key)
        return reference

    @cached_property
    def _extracted(self) -> tuple[Tensor, Tensor]:
        return self.evaluator.extract(self.samples.images)

    @property
    def logits(self) -> Tensor:
        return self._extracted[0]

    @property
    def features(self) -> Tensor:
        return self._extracted[1]

    def sample_mask(self, label: int | None) -> Tensor:
        labels = self.samples.labels
        return torch.ones_like(labels, dtype=torch.bool) if label is None else labels == label

    def groups(self) -> list[int | None]:
        """Every novel class, then None (pooled)."""
        return [*self.classes, None]


def _add(out: Values, key: str, label: int | None, v: dict[str, Any]) -> None:
    out[key if label is None else class_key(key, label)] = v


def compute_is(ctx: EvaluationContext) -> Values:
    """IS of the pooled novel-class samples, and of the held-out real images of the same classes (``is_real``)."""
    from harness.metrics.fidelity import FIDELITY_SEED, inception_score

    splits = ctx.config.is_splits
    mean, std = inception_score(ctx.logits, splits, FIDELITY_SEED)
    real_mean, real_std = ctx.reference.inception_score(splits, FIDELITY_SEED)
    return {
        "is": value(mean, std=std, metric="is", higher=True, n=len(ctx.logits)),
        "is_real": value(real_mean, std=real_std, metric="is", higher=True, reference=True,
                         n=len(ctx.reference.logits)),
    }


def compute_fid(ctx: EvaluationContext) -> Values:
    """FID per novel class and pooled, each beside the real-vs-real FID of two held-out halves (``fid_real_floor``)."""
    from harness.metrics.fidelity import fid_statistics, frechet_distance

    out: Values = {}
    ref = ctx.reference
    for label in ctx.groups():
        feats = ctx.features[ctx.sample_mask(label)]
        v = (frechet_distance(fid_statistics(feats), ref.fid_statistics(label))
             if len(feats) >= 2 and len(ref.class_features(label)) >= 2 else math.nan)
        _add(out, "fid", label, value(v, metric="fid", higher=False, label=label, n=len(feats)))
        half = len(ref.halves(label)[0])
        _add(out, "fid_real_floor", label, value(ref.fid_floor(label), metric="fid", higher=False, label=label,
                                                 reference=True, n=2 * half))
    return out


def compute_kid(ctx: EvaluationContext) -> Values:
    """KID per novel class and pooled (subset size min(kid_subset_size, n_generated, n_real))."""
    from harness.metrics.fidelity import FIDELITY_SEED, kid

    out: Values = {}
    cfg = ctx.config
    for label in ctx.groups():
        mean, std, size = kid(ctx.features[ctx.sample_mask(label)], ctx.reference.class_features(label),
                              cfg.kid_subset_size, cfg.kid_subsets, FIDELITY_SEED)
        _add(out, "kid", label, value(mean, std=std, metric="kid", higher=False, label=label, n=size))
    return out


def compute_prc(ctx: EvaluationContext) -> Values:
    """Precision, recall and F-score (Kynkäänniemi et al.) per novel class and pooled, equal set sizes."""
    from harness.metrics.fidelity import FIDELITY_SEED, precision_recall

    out: Values = {}
    for label in ctx.groups():
        gen, real = ctx.features[ctx.sample_mask(label)], ctx.reference.class_features(label)
        p, r, f = precision_recall(gen, real, ctx.config.prc_neighborhood, FIDELITY_SEED)
        n = min(len(gen), len(real))
        for key, v in (("precision", p), ("recall", r), ("f_score", f)):
            _add(out, key, label, value(v, metric="prc", higher=True, label=label, n=n))
    return out


def compute_class_consistency(ctx: EvaluationContext) -> Values:
    """Share of the samples of class c the evaluator assigns to c, per class and pooled, beside the evaluator's
    accuracy on the held-out real images of the same classes (``class_consistency_real``)."""
    if ctx.evaluator.num_classes is None:
        raise ValueError("class_consistency needs evaluator: domain_classifier")
    out: Values = {}
    predicted = ctx.logits.argmax(1)
    hits = predicted == ctx.samples.labels
    for label in ctx.groups():
        mask = ctx.sample_mask(label)
        n = int(mask.sum())
        share = float(hits[mask].double().mean()) if n else math.nan
        _add(out, "class_consistency", label, value(share, metric="class_consistency", higher=True, label=label, n=n))
    ref = ctx.reference
    real_hits = ref.logits.argmax(1) == ref.labels
    out["class_consistency_real"] = value(float(real_hits.double().mean()) if len(real_hits) else math.nan,
                                          metric="class_consistency", higher=True, reference=True, n=len(real_hits))
    return out


def compute_accuracy(ctx: EvaluationContext) -> Values:
    """Downstream accuracy with the samples (``accuracy``) beside ``accuracy_real_only`` and
    ``accuracy_classic_aug``; mean ± std over the classifier seeds."""
    from harness.metrics.accuracy import AccuracyResult, downstream_accuracy

    result = downstream_accuracy(ctx.split, ctx.samples, ctx.config.accuracy, ctx.dataset.info.name, ctx.device,
                                 cache_root=ctx.cache_root)
    ctx.provenance["accuracy_baseline_cache"] = result.baseline_cache
    out: Values = {}
    n = len(ctx.split.heldout)
    for key, runs, ref in (("accuracy", result.accuracy, False), ("accuracy_real_only", result.real_only, True),
                           ("accuracy_classic_aug", result.classic_aug, True)):
        mean, std = AccuracyResult.mean_std(runs)
        out[key] = value(mean, std=std, metric="accuracy", higher=True, reference=ref, n=n)
    return out


def compute_memorisation(ctx: EvaluationContext) -> Values:
    """Nearest-shot distance of the samples relative to held-out real images (ratio of medians; ≈1 no copying,
    ≪1 copying) and the share of samples closer than the ``memorisation_quantile`` of the real distances."""
    from harness.metrics.memorisation import memorisation_by_class

    ref = ctx.reference
    results = memorisation_by_class(
        ctx.features, ctx.samples.labels, ref.shot_features, ref.shot_labels,
        {c: ref.shot_distances(c) for c in ctx.classes}, ctx.classes, ctx.config.memorisation_quantile,
    )
    out: Values = {}
    for label in ctx.groups():
        r = results[label]
        _add(out, "memorisation", label, value(r.ratio, metric="memorisation", higher=True, label=label,
                                               n=r.num_samples))
        _add(out, "memorisation_close_share", label, value(r.close_share, metric="memorisation", higher=False,
                                                           label=label, n=r.num_samples))
    return out
