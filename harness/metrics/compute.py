"""Every built-in metric: its declaration (name, description, keys with direction and references) right above the
function that computes it from one trial's samples.

Torch-free at import time — torch, torch-fidelity and the evaluator are imported inside the functions, when a metric
runs — because :mod:`harness.metrics.table` imports this module to register the metrics, and the table must stay
light (see its docstring). A function returns ``{flat key: MetricValue}``; per-class keys are ``<key>/class_<id>``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from harness.metrics.table import HIGHER, LOWER, METRICS, Key, near_chance, register_metric, target

if TYPE_CHECKING:
    from harness.metrics.context import EvaluationContext
    from harness.metrics.value import MetricValue

Values = dict[str, "MetricValue"]


@register_metric(
    "is", "Inception Score of the pooled novel-class samples (evaluator logits), beside the real held-out images' IS "
    "(is_real)",
    Key("is", HIGHER), Key("is_real", HIGHER, reference_of="is"))
def compute_is(ctx: EvaluationContext) -> Values:
    """IS of the pooled novel-class samples, and of the held-out real images of the same classes (``is_real``)."""
    from harness.metrics.fidelity import FIDELITY_SEED, inception_score

    metric = METRICS.get("is")
    splits = ctx.config.is_splits
    mean, std = inception_score(ctx.logits, splits, FIDELITY_SEED)
    real_mean, real_std = ctx.reference.inception_score(splits, FIDELITY_SEED)
    return dict([metric.measure("is", mean, std=std, n=len(ctx.logits)),
                 metric.measure("is_real", real_mean, std=real_std, n=len(ctx.reference.logits))])


@register_metric(
    "fid", "Fréchet distance of evaluator features to held-out real images, per class and pooled, beside the "
    "real-vs-real floor of two held-out halves (fid_real_floor)",
    Key("fid", LOWER, per_class=True), Key("fid_real_floor", LOWER, per_class=True, reference_of="fid"))
def compute_fid(ctx: EvaluationContext) -> Values:
    """FID per novel class and pooled, each beside the real-vs-real FID of two held-out halves (``fid_real_floor``)."""
    from harness.metrics.fidelity import fid_statistics, frechet_distance

    metric = METRICS.get("fid")
    out = []
    ref = ctx.reference
    for label in ctx.groups():
        feats = ctx.features[ctx.sample_mask(label)]
        v = (frechet_distance(fid_statistics(feats), ref.fid_statistics(label))
             if len(feats) >= 2 and len(ref.class_features(label)) >= 2 else math.nan)
        out.append(metric.measure("fid", v, label=label, n=len(feats)))
        half = len(ref.halves(label)[0])
        out.append(metric.measure("fid_real_floor", ref.fid_floor(label), label=label, n=2 * half))
    return dict(out)


@register_metric(
    "kid", "Kernel Inception Distance (polynomial kernel, evaluator features), per class and pooled",
    Key("kid", LOWER, per_class=True))
def compute_kid(ctx: EvaluationContext) -> Values:
    """KID per novel class and pooled (subset size min(kid_subset_size, n_generated, n_real))."""
    from harness.metrics.fidelity import FIDELITY_SEED, kid

    metric = METRICS.get("kid")
    out = []
    cfg = ctx.config
    for label in ctx.groups():
        mean, std, size = kid(ctx.features[ctx.sample_mask(label)], ctx.reference.class_features(label),
                              cfg.kid_subset_size, cfg.kid_subsets, FIDELITY_SEED)
        out.append(metric.measure("kid", mean, std=std, label=label, n=size))
    return dict(out)


@register_metric(
    "prc", "precision, recall and F-score of the samples' feature manifold against held-out real images (k-NN "
    "balls), per class and pooled",
    Key("precision", HIGHER, per_class=True), Key("recall", HIGHER, per_class=True),
    Key("f_score", HIGHER, per_class=True))
def compute_prc(ctx: EvaluationContext) -> Values:
    """Precision, recall and F-score (Kynkäänniemi et al.) per novel class and pooled, equal set sizes."""
    from harness.metrics.fidelity import FIDELITY_SEED, precision_recall

    metric = METRICS.get("prc")
    out = []
    for label in ctx.groups():
        gen, real = ctx.features[ctx.sample_mask(label)], ctx.reference.class_features(label)
        p, r, f = precision_recall(gen, real, ctx.config.prc_neighborhood, FIDELITY_SEED)
        n = min(len(gen), len(real))
        out += [metric.measure(key, v, label=label, n=n) for key, v in (("precision", p), ("recall", r),
                                                                        ("f_score", f))]
    return dict(out)


@register_metric(
    "class_consistency", "share of samples of class c the domain classifier assigns to c, beside its accuracy on "
    "held-out real images (class_consistency_real)",
    Key("class_consistency", HIGHER, per_class=True),
    Key("class_consistency_real", HIGHER, reference_of="class_consistency"),
    collapse=near_chance("class_consistency"))
def compute_class_consistency(ctx: EvaluationContext) -> Values:
    """Share of the samples of class c the evaluator assigns to c, per class and pooled, beside the evaluator's
    accuracy on the held-out real images of the same classes (``class_consistency_real``)."""
    if ctx.evaluator.num_classes is None:
        raise ValueError("class_consistency needs evaluator: domain_classifier")
    metric = METRICS.get("class_consistency")
    out = []
    predicted = ctx.logits.argmax(1)
    hits = predicted == ctx.samples.labels
    for label in ctx.groups():
        mask = ctx.sample_mask(label)
        n = int(mask.sum())
        share = float(hits[mask].double().mean()) if n else math.nan
        out.append(metric.measure("class_consistency", share, label=label, n=n))
    ref = ctx.reference
    real_hits = ref.logits.argmax(1) == ref.labels
    out.append(metric.measure("class_consistency_real",
                              float(real_hits.double().mean()) if len(real_hits) else math.nan, n=len(real_hits)))
    return dict(out)


@register_metric(
    "accuracy", "held-out accuracy of a classifier trained on the k shots + samples, beside real-only and "
    "classic-augmentation baselines (mean ± std over seeds)",
    Key("accuracy", HIGHER), Key("accuracy_real_only", HIGHER, reference_of="accuracy"),
    Key("accuracy_classic_aug", HIGHER, reference_of="accuracy", baseline="classic_aug"), needs_evaluator=False)
def compute_accuracy(ctx: EvaluationContext) -> Values:
    """Downstream accuracy with the samples (``accuracy``) beside ``accuracy_real_only`` and
    ``accuracy_classic_aug``; mean ± std over the classifier seeds."""
    from harness.metrics.accuracy import AccuracyResult, downstream_accuracy

    metric = METRICS.get("accuracy")
    result = downstream_accuracy(ctx.split, ctx.samples, ctx.config.accuracy, ctx.dataset.info.name, ctx.device,
                                 cache_root=ctx.cache_root)
    ctx.provenance["accuracy_baseline_cache"] = result.baseline_cache
    n = len(ctx.split.heldout)
    out = []
    for key, runs in (("accuracy", result.accuracy), ("accuracy_real_only", result.real_only),
                      ("accuracy_classic_aug", result.classic_aug)):
        mean, std = AccuracyResult.mean_std(runs)
        out.append(metric.measure(key, mean, std=std, n=n))
    return dict(out)


# The memorisation ratio is ≈ 1 when samples are as far from the shots as unseen real images are; ≪ 1 means copies,
# ≫ 1 samples unlike the data (noise): a target, not a direction, so no report calls a method "best" at it.
@register_metric(
    "memorisation", "median nearest-shot distance of samples / that of held-out real images (≈1 no copying, ≪1 "
    "copying), and the share of samples closer than the 5 % real quantile",
    Key("memorisation", target("≈ 1"), per_class=True), Key("memorisation_close_share", LOWER, per_class=True))
def compute_memorisation(ctx: EvaluationContext) -> Values:
    """Nearest-shot distance of the samples relative to held-out real images (ratio of medians; ≈1 no copying,
    ≪1 copying) and the share of samples closer than the ``memorisation_quantile`` of the real distances."""
    from harness.metrics.memorisation import memorisation_by_class

    metric = METRICS.get("memorisation")
    ref = ctx.reference
    results = memorisation_by_class(
        ctx.features, ctx.samples.labels, ref.shot_features, ref.shot_labels,
        {c: ref.shot_distances(c) for c in ctx.classes}, ctx.classes, ctx.config.memorisation_quantile,
    )
    out = []
    for label in ctx.groups():
        r = results[label]
        out.append(metric.measure("memorisation", r.ratio, label=label, n=r.num_samples))
        out.append(metric.measure("memorisation_close_share", r.close_share, label=label, n=r.num_samples))
    return dict(out)


def _diversity_keys(space: str) -> tuple[Key, ...]:
    """Within-class and CDC intra-cluster diversity in ``space``, each beside held-out real images' value."""
    keys = []
    for name in (f"diversity_{space}", f"intra_cluster_{space}"):
        keys += [Key(name, HIGHER, per_class=True), Key(f"{name}_real", HIGHER, per_class=True, reference_of=name)]
    return tuple(keys)


# Higher is more diverse, as the field reports LPIPS diversity; noise is diverse too, so every value stands beside
# held-out real images' (the *_real references): a generator near the real value is as diverse as the class.
@register_metric(
    "diversity", "mean pairwise distance of a class's samples (evaluator features; pixels, RMS) and CDC's "
    "intra-cluster variant (samples grouped by nearest shot), per class and pooled, beside held-out real images'",
    *_diversity_keys("features"), *_diversity_keys("pixel"))
def compute_diversity(ctx: EvaluationContext) -> Values:
    """Within-class and intra-cluster diversity in the evaluator's feature space and in pixel space."""
    from harness.metrics.diversity import euclidean, measure_diversity, pixel_vectors

    metric = METRICS.get("diversity")
    ref, limit = ctx.reference, ctx.config.diversity.images_per_class

    def features(c: int):
        return ctx.features[ctx.sample_mask(c)], ref.class_features(c), ref.shot_features[ref.shot_labels == c]

    return {**measure_diversity(metric, "features", ctx.classes, features, lambda x: x, euclidean, limit),
            **measure_diversity(metric, "pixel", ctx.classes, ctx.class_images, pixel_vectors, euclidean, limit)}


def _check_lpips(config) -> object:
    from harness.metrics.lpips import check_lpips

    return check_lpips(config)


@register_metric(
    "lpips_diversity", "LPIPS diversity of a class's samples and CDC's intra-cluster LPIPS, per class and pooled, "
    "beside held-out real images' (needs the lpips linear layers and the torchvision backbone as local files)",
    *_diversity_keys("lpips"), needs_evaluator=False, check=_check_lpips)
def compute_lpips_diversity(ctx: EvaluationContext) -> Values:
    """Within-class and intra-cluster LPIPS (``evaluation.lpips``) of at most ``lpips.images_per_class`` samples
    and held-out images per class."""
    from harness.metrics.diversity import measure_diversity
    from harness.metrics.lpips import check_image_size, load_lpips

    settings = ctx.config.lpips
    check_image_size(settings.net, settings.size or min(ctx.samples.images.shape[2:]))
    network = load_lpips(ctx.config, ctx.device)
    return measure_diversity(METRICS.get("lpips_diversity"), "lpips", ctx.classes, ctx.class_images, network.embed,
                             network.pairwise, settings.images_per_class)


@register_metric(
    "ndb", "NDB (bins, of K k-means bins in pixel space fitted on the classes' training images, where the samples' "
    "share differs at α) and JS divergence of the bin histograms (Richardson & Weiss 2018), beside held-out real "
    "images' values",
    Key("ndb", LOWER), Key("ndb_js", LOWER), Key("ndb_real", LOWER, reference_of="ndb"),
    Key("ndb_js_real", LOWER, reference_of="ndb_js"), needs_evaluator=False)
def compute_ndb(ctx: EvaluationContext) -> Values:
    """NDB and JS of the samples and of the held-out real images against the training bins, at equal sizes."""
    from harness.metrics.ndb import balanced_index, ndb_score, pixel_vectors, training_bins

    metric = METRICS.get("ndb")
    cfg = ctx.config.ndb
    bins = training_bins(ctx.dataset, ctx.split, cfg.bins, cfg.seed, cache_root=ctx.cache_root)
    ctx.provenance["ndb_bins_cache"] = bins.cache_status
    real = ctx.split.heldout
    per_class = min(int((labels == c).sum()) for labels in (real.labels, ctx.samples.labels) for c in ctx.classes)
    out = []
    for images, suffix in ((ctx.samples, ""), (real, "_real")):
        chosen = images.images[balanced_index(images.labels, ctx.classes, per_class, cfg.seed)]
        result = ndb_score(bins, pixel_vectors(chosen), cfg.alpha)
        out += [metric.measure(f"ndb{suffix}", result.ndb, n=result.count),
                metric.measure(f"ndb_js{suffix}", result.js, n=result.count)]
    return dict(out)
