"""Diversity: how far apart the samples of one class are from each other, beside the same for held-out real images.

Two quantities, each computed from a matrix of distances so that every distance space (pixels, the evaluator's
features, LPIPS in :mod:`harness.metrics.lpips`) shares one definition:

* **within-class diversity** (:func:`mean_pairwise`): the mean distance over every unordered pair of distinct images
  of the class — the LPIPS diversity of the few-shot protocols (LoFGAN, WaveGAN), here also in pixel and feature
  space. Identical samples score 0.
* **intra-cluster diversity** (:func:`intra_cluster`), CDC's (Ojha et al. 2021, "Few-shot Image Generation via
  Cross-domain Correspondence", Sec. 4): every image is assigned to its nearest shot (k clusters for k shots), the mean
  pairwise distance is taken within each cluster, and the clusters' means are averaged. Clusters with fewer than two
  members have no pair and are left out of the average, as CDC's evaluation code does (its ``nanmean``). A generator
  that returns slightly perturbed copies of its shots can still look diverse overall — its copies of different shots
  are far apart — but each cluster is tight: this is the number that catches it.

Neither has a direction beyond "higher is more diverse": noise is very diverse. What makes the number readable is
the same quantity for held-out real images of the class (the ``*_real`` reference keys), the diversity a faithful
generator would have; both are reported side by side, never one without the other.

Pooled values are the mean of the per-class values: pairs of images of two different classes are not counted, since
a class-conditional generator's job is diversity within a class (and between-class distances would swamp it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from harness.metrics.table import MetricSpec
    from harness.metrics.value import MetricValue

DIVERSITY_SEED = 0


Distances = Callable[[Any, Any], Tensor]


def mean_pairwise(distances: Tensor) -> float:
    """Mean of the strict upper triangle of the square ``distances`` matrix (every unordered pair of distinct
    images once, no image with itself); NaN below two images."""
    n = len(distances)
    if n < 2:
        return math.nan
    rows, cols = torch.triu_indices(n, n, offset=1)
    return float(distances[rows, cols].double().mean())


def intra_cluster(within: Tensor, to_centres: Tensor) -> float:
    """CDC's intra-cluster diversity: ``within`` (n×n) distances among the images, ``to_centres`` (n×k) their
    distances to the k shots. Each image joins its nearest shot's cluster; the mean of :func:`mean_pairwise` over
    the clusters with at least two members (NaN when there is none)."""
    if len(within) == 0 or to_centres.shape[1] == 0:
        return math.nan
    nearest = to_centres.argmin(dim=1)
    values = []
    for centre in range(to_centres.shape[1]):
        members = torch.nonzero(nearest == centre).flatten()
        if len(members) >= 2:
            values.append(mean_pairwise(within[members][:, members]))
    return float(np.mean(values)) if values else math.nan


def euclidean(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances between the rows of ``a`` and ``b`` (float64)."""
    return torch.cdist(a.double(), b.double())


def pixel_vectors(images: Tensor) -> Tensor:
    """Images as vectors scaled by 1/√(number of values), so that Euclidean distances between them are root mean
    square pixel differences: comparable across image sizes and channel counts."""
    flat = images.reshape(len(images), -1).double()
    return flat / math.sqrt(max(1, flat.shape[1]))


def seeded_subset(count: int, limit: int, *entropy: int) -> Tensor:
    """Indices of at most ``limit`` of ``count`` items (all when they fit), drawn with
    ``default_rng([DIVERSITY_SEED, *entropy])`` and kept in ascending order: the same subset on every machine and in
    every re-evaluation."""
    if count <= limit:
        return torch.arange(count)
    chosen = np.random.default_rng([DIVERSITY_SEED, *entropy]).choice(count, size=limit, replace=False)
    return torch.as_tensor(np.sort(chosen))


@dataclass(frozen=True)
class ClassDiversity:
    """One image set of one class in one distance space: within-class and intra-cluster diversity, image count."""

    within: float
    intra_cluster: float
    count: int


def class_diversity(images: Any, shots: Any, distances: Distances, count: int) -> ClassDiversity:
    """Both quantities for one set: ``images`` and ``shots`` in whatever form ``distances(a, b) -> |a|×|b|`` takes
    (vectors, LPIPS embeddings); ``count`` the number of images."""
    within = distances(images, images)
    return ClassDiversity(mean_pairwise(within), intra_cluster(within, distances(images, shots)), count)


def pooled(values: Sequence[float]) -> float:
    """The mean of the finite per-class values (NaN when none is)."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def measure_diversity(metric: MetricSpec, space: str, classes: Sequence[int],
                      sets: Callable[[int], tuple[Tensor, Tensor, Tensor]], embed: Callable[[Tensor], Any],
                      distances: Distances, limit: int) -> dict[str, MetricValue]:
    """The keys ``diversity_<space>``, ``intra_cluster_<space>`` and their ``*_real`` references, per class and
    pooled. ``sets(c)`` gives class c's (samples, held-out real images, shots) in the space's input form; at most
    ``limit`` samples and real images (seeded subsets) are embedded with ``embed`` and compared with ``distances``."""
    by_suffix: dict[str, list[ClassDiversity]] = {"": [], "_real": []}  # the samples' keys, the references'
    for c in classes:
        samples, real, shots = sets(c)
        centres = embed(shots)
        for suffix, images in (("", samples), ("_real", real)):
            # the same draw for both sets, so that real images given as samples score exactly the reference
            chosen = images[seeded_subset(len(images), limit, c)]
            by_suffix[suffix].append(class_diversity(embed(chosen), centres, distances, len(chosen)))
    out = []
    for suffix, results in by_suffix.items():
        rows = [(c, r.within, r.intra_cluster, r.count) for c, r in zip(classes, results)]
        rows.append((None, pooled([r.within for r in results]), pooled([r.intra_cluster for r in results]),
                     sum(r.count for r in results)))
        for label, within, intra, n in rows:
            out += [metric.measure(f"diversity_{space}{suffix}", within, label=label, n=n),
                    metric.measure(f"intra_cluster_{space}{suffix}", intra, label=label, n=n)]
    return dict(out)
