"""``EvaluationConfig``: how a trial's samples are evaluated — the ``evaluation`` section of a suite.

It lives with the metrics because the metrics are what read it (``evaluate(config, ...)``, the evaluator, the
accuracy protocol); the suite schema embeds it. Keeping it here lets ``harness.metrics`` depend on nothing of the
suite, and the suite on the metrics only for this schema and name checks. Torch-free (suite validation stays light).
"""

from __future__ import annotations

from typing import Literal

import pydantic

__all__ = ["ADDED_FIELDS", "EvaluationConfig"]

_STRICT = pydantic.ConfigDict(extra="forbid", frozen=True)


class EvaluationConfig(pydantic.BaseModel):
    """How a trial's samples are evaluated (see ``harness.metrics``; `harness metrics` lists the metric names)."""

    model_config = _STRICT

    class Accuracy(pydantic.BaseModel):
        """Downstream accuracy (metric ``accuracy``): a small CNN trained from scratch on the k shots (+ samples),
        tested on the held-out real images of the novel classes; defaults take ~1-2 s per run at 28 px on a CPU."""

        model_config = _STRICT

        steps: pydantic.PositiveInt = pydantic.Field(200, description="optimiser steps per classifier run")
        batch_size: int = pydantic.Field(64, ge=2, description="images per step (real shots + generated)")
        lr: pydantic.PositiveFloat = pydantic.Field(1e-3, description="Adam learning rate")
        seeds: pydantic.PositiveInt = pydantic.Field(3, description="classifier runs per arm (mean ± std)")
        generated_fraction: float = pydantic.Field(
            0.5, ge=0, le=1, description="share of each batch drawn from the generated samples (rest: the shots)"
        )
        width: pydantic.PositiveInt = pydantic.Field(16, description="channels of the classifier's first conv layer")
        flips: bool | None = pydantic.Field(
            None, description="horizontal flips in the classic-augmentation baseline; default by dataset (not digits)"
        )

    class Diversity(pydantic.BaseModel):
        """Metric ``diversity`` (pixel and feature space)."""

        model_config = _STRICT

        images_per_class: pydantic.PositiveInt = pydantic.Field(
            1000, description="samples (and held-out images) per class compared pairwise, a seeded subset when there "
            "are more: every pair of them is compared")

    class Lpips(pydantic.BaseModel):
        """LPIPS (Zhang et al. 2018) for metric ``lpips_diversity``: the ``lpips`` package's linear layers on a
        torchvision backbone, both read from local files (never downloaded; validation names a missing one)."""

        model_config = _STRICT

        net: Literal["vgg", "alex"] = pydantic.Field(
            "vgg", description="backbone: vgg (CDC's intra-cluster LPIPS uses lpips.LPIPS(net='vgg')) or alex "
            "(the lpips package's default; needs images of at least 31 px: set size)")
        weights: str | None = pydantic.Field(
            None, description="the lpips package's linear-layer file for net (lpips/weights/v0.1/<net>.pth); default: "
            "that file inside an installed lpips package")
        backbone_weights: str | None = pydantic.Field(
            None, description="torchvision's ImageNet backbone file (vgg16-397923af.pth or alexnet-owt-7be5be79.pth); "
            "default the torch hub cache (<torch hub dir>/checkpoints/)")
        size: pydantic.PositiveInt | None = pydantic.Field(
            None, description="resize images to size × size (bilinear) before LPIPS; default: as they are")
        images_per_class: pydantic.PositiveInt = pydantic.Field(
            100, description="samples (and held-out images) per class scored with LPIPS, a seeded subset: "
            "every pair of them is compared")

    class Ndb(pydantic.BaseModel):
        """NDB / JS (Richardson & Weiss 2018) for metric ``ndb``: k-means bins in pixel space."""

        model_config = _STRICT

        bins: int = pydantic.Field(100, ge=2, description="K of the k-means (the paper's K = 100 on MNIST)")
        alpha: float = pydantic.Field(0.05, gt=0, lt=1, description="significance level of each bin's two-proportion "
                                      "z-test (the paper's 0.05)")
        seed: int = pydantic.Field(0, ge=0, description="k-means initialisation seed")

    samples_per_class: pydantic.PositiveInt = pydantic.Field(1000, description="generated images per novel class")
    metrics: list[str] = pydantic.Field(default_factory=list, description="metric names (`harness metrics`)")
    grid_samples_per_class: int = pydantic.Field(8, ge=0, le=64, description="images per class in the sample grid")
    evaluator: Literal["domain_classifier", "inception_v3"] = pydantic.Field(
        "domain_classifier",
        description="network the metrics' features/logits come from: a CNN the harness trains on the dataset's "
        "training split (cached), or torch-fidelity's InceptionV3 (needs its weights file, never downloaded)",
    )
    inception_weights: str | None = pydantic.Field(
        None,
        description="inception_v3 only: path of weights-inception-2015-12-05-6726825d.pth; default the torch hub "
        "cache (<torch hub dir>/checkpoints/)",
    )
    kid_subset_size: pydantic.PositiveInt = pydantic.Field(
        1000, description="KID subset size; bounded by the sample counts (min(this, n_generated, n_real))"
    )
    kid_subsets: pydantic.PositiveInt = pydantic.Field(100, description="KID subsets (mean ± std over them)")
    is_splits: pydantic.PositiveInt = pydantic.Field(10, description="IS splits (mean ± std over them)")
    prc_neighborhood: pydantic.PositiveInt = pydantic.Field(3, description="k of the k-NN radii of precision/recall")
    memorisation_quantile: float = pydantic.Field(
        0.05, gt=0, lt=1,
        description="memorisation_close_share counts samples nearer a shot than this quantile of held-out images",
    )
    accuracy: EvaluationConfig.Accuracy = pydantic.Field(
        default_factory=lambda: EvaluationConfig.Accuracy(), description="downstream-accuracy classifier settings"
    )
    diversity: EvaluationConfig.Diversity = pydantic.Field(
        default_factory=lambda: EvaluationConfig.Diversity(), description="image counts of metric diversity"
    )
    lpips: EvaluationConfig.Lpips = pydantic.Field(
        default_factory=lambda: EvaluationConfig.Lpips(), description="LPIPS network of metric lpips_diversity"
    )
    ndb: EvaluationConfig.Ndb = pydantic.Field(
        default_factory=lambda: EvaluationConfig.Ndb(), description="k-means bins and test of metric ndb"
    )

    @pydantic.model_validator(mode="after")
    def _evaluator_fits(self) -> EvaluationConfig:
        if self.inception_weights is not None and self.evaluator != "inception_v3":
            raise ValueError("inception_weights is only used with evaluator: inception_v3")
        if self.evaluator == "inception_v3" and "class_consistency" in self.metrics:
            raise ValueError("metric class_consistency needs evaluator: domain_classifier (InceptionV3 predicts "
                             "ImageNet classes, not the dataset's)")
        return self


# Sections added to the evaluation config after version 1 of the suite format, with their default dumps: a suite or
# trial hash leaves them out while they keep these values, so the hashes of every earlier suite stay as they were
# (harness.suite's _SPEC_ADDED / _SUITE_ADDED read this).
ADDED_FIELDS: dict[str, object] = {
    "diversity": EvaluationConfig.Diversity().model_dump(mode="json"),
    "lpips": EvaluationConfig.Lpips().model_dump(mode="json"),
    "ndb": EvaluationConfig.Ndb().model_dump(mode="json"),
}
