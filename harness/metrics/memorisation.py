"""Memorisation: do the samples of a class sit closer to that class's k shots than unseen real images do?

For every sample of novel class c, d_gen is the Euclidean distance (evaluator features) to its nearest shot of c;
for every held-out real image of c, d_real the same. Reported:

* ``memorisation`` = median(d_gen) / median(d_real) — per class, and pooled over all classes (the medians of all
  samples' and all held-out images' distances, each to its own class's shots). ≈ 1: samples are as far from the
  shots as new real images are (no copying); ≪ 1: samples hug the shots (copying). Higher is better up to ≈ 1
  (values above 1 mean samples are farther from the shots than real images, which is a fidelity problem, not
  memorisation). Medians, so a few outliers (broken samples) do not hide copies.
* ``memorisation_close_share`` = share of samples with d_gen below the ``quantile``-quantile of d_real of the same
  class (default 5 %): ≈ quantile for a generator that does not copy, → 1 for one that returns its shots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def nearest_distances(queries: Tensor, anchors: Tensor) -> Tensor:
    """Distance of each row of ``queries`` to its nearest row of ``anchors`` (float64 for exact ties)."""
    if len(queries) == 0 or len(anchors) == 0:
        return torch.full((len(queries),), math.nan, dtype=torch.float64)
    return torch.cdist(queries.double(), anchors.double()).min(dim=1).values


@dataclass(frozen=True)
class MemorisationResult:
    ratio: float
    close_share: float
    num_samples: int


def memorisation(sample_distances: Tensor, real_distances: Tensor, quantile: float = 0.05) -> MemorisationResult:
    """Ratio of medians and share of samples closer than the ``quantile`` of the real distances (one class)."""
    if len(sample_distances) == 0 or len(real_distances) == 0:
        return MemorisationResult(math.nan, math.nan, len(sample_distances))
    real_median = float(real_distances.median())
    ratio = float(sample_distances.median()) / real_median if real_median > 0 else math.nan
    threshold = float(torch.quantile(real_distances, quantile))
    return MemorisationResult(ratio, float((sample_distances < threshold).double().mean()), len(sample_distances))


def memorisation_by_class(
    sample_features: Tensor, sample_labels: Tensor, shot_features: Tensor, shot_labels: Tensor,
    real_distances: dict[int, Tensor], classes: tuple[int, ...], quantile: float = 0.05,
) -> dict[int | None, MemorisationResult]:
    """:func:`memorisation` per class (keys: class ids) and pooled (key None).

    The pooled close share uses each class's own threshold; the pooled ratio is the ratio of the pooled medians.
    """
    out: dict[int | None, MemorisationResult] = {}
    all_sample, all_real, close = [], [], []
    for c in classes:
        d_gen = nearest_distances(sample_features[sample_labels == c], shot_features[shot_labels == c])
        d_real = real_distances[c]
        out[c] = memorisation(d_gen, d_real, quantile)
        all_sample.append(d_gen)
        all_real.append(d_real)
        if len(d_real) and len(d_gen):
            close.append(d_gen < float(torch.quantile(d_real, quantile)))
    pooled = memorisation(torch.cat(all_sample), torch.cat(all_real), quantile)
    share = float(torch.cat(close).double().mean()) if close else math.nan
    out[None] = MemorisationResult(pooled.ratio, share, pooled.num_samples)
    return out
