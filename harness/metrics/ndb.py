"""NDB and JS (Richardson & Weiss 2018, "On GANs and GMMs", Sec. 4): mode coverage measured in pixel space, with no
pretrained network.

The paper's procedure: k-means (K bins) on the training images; every evaluated image goes to its nearest centre
(L2); for each bin, a two-proportion z-test of the evaluated share against the training share, two-tailed at
significance level α; NDB = the number of bins where the shares differ significantly, JS = the Jensen–Shannon
divergence between the two bin histograms (natural logarithm, as the authors' code). K = 100 and α = 0.05 on MNIST.

This harness fits the bins on the training images of the evaluated (novel) classes — those images are the classes'
distribution, of which a method saw only the shots — leaving out any training image held out for evaluation (a
selection trial's), with every class cut to the same number of images (the smallest class's, a seeded subset), since
a generator is asked for the same number of samples of every class. The k-means is scikit-learn's (k-means++, one
initialisation, at most 100 iterations as in the authors' code, a fixed seed), fitted once per set of classes and
cached.

Its real-data reference (``ndb_real``, ``ndb_js_real``) is the held-out real images of the classes compared with the
same bins in the same way: what a perfect generator would score. NDB's power and JS's small-sample bias grow with the
number of images compared, so the samples are compared at the held-out images' size (a seeded subset per class of
the larger set, as precision/recall use equal set sizes): value and reference are then on the same footing.

Measured on the embedded MNIST (400 training and 100 test images per class), all ten classes, bins fitted on the
4 000 training images, K = 100, α = 0.05; k-means seed 0 (seeds 0–2 in brackets), beside the paper's numbers (MNIST,
60 000 training and 10 000 test images):

==============================================  ===============  =====================================
compared with the training images' bins          paper NDB, JS    embedded MNIST NDB, JS
==============================================  ===============  =====================================
a random half of the training images (2 000)     0, 0.0014        0, 0.0035 (0; 0.0030–0.0036)
the same half without digit 9 (1 800)            –                8, 0.0187 (6–9; 0.018–0.019)
the test images (1 000)                          4, 0.0041        11, 0.0226 (10–15; 0.023–0.028)
the test images without digit 9 (900)            11, 0.016        10, 0.0324 (10–19; 0.032–0.041)
==============================================  ===============  =====================================

With the bins fitted on one half of the training images and the other half compared (disjoint, same distribution):
3–5 bins, JS 0.010–0.012, about the α·K = 5 a test at level α finds by chance; without digit 9: 9–11 bins, JS
0.024–0.026. As in the paper, a subset of the fitting images scores no bin, and removing a class from a set of the
training distribution adds bins (0 → 6–9) and multiplies JS (by five). Unlike the paper: the JS values are larger,
because the sets are a tenth of the paper's (JS between histograms of n images is biased upwards by about
(K − 1) / (8 n)); and the embedded test digits differ from its training digits by more than chance (10–15 bins,
where disjoint training halves give 3–5), so on the test images removing digit 9 raises JS (× 1.4) but hardly NDB,
and on this data a trial's held-out reference sits above the chance level. ``tests/test_ndb.py`` checks the first
two rows' behaviour.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from harness.metrics.cache import cache_dir, file_lock, read_tensors, stable_hash, write_tensors

if TYPE_CHECKING:
    from harness.data import Dataset, FewShotSplit

NDB_VERSION = 1
MEMORY_ENTRIES = 8
KMEANS_MAX_ITER = 100  # the authors' code: KMeans(n_clusters=K, max_iter=100)


@dataclass(frozen=True)
class Bins:
    """k-means centres (K × D) and the share of the fitting images in each bin (``proportions``, of ``count``);
    ``cache_status``: memory, disk or miss (fitted now)."""

    centres: Tensor
    proportions: Tensor
    count: int
    cache_status: str = "miss"


def fit_bins(vectors: Tensor, bins: int, seed: int = 0) -> Bins:
    """k-means with ``bins`` clusters on ``vectors`` (N × D); the bins' shares of those same vectors."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    data = vectors.double().numpy()
    if len(data) < bins:
        raise ValueError(f"NDB needs at least {bins} training images to fit {bins} bins, got {len(data)}")
    with threadpool_limits(limits=torch.get_num_threads()):
        kmeans = KMeans(n_clusters=bins, n_init=1, max_iter=KMEANS_MAX_ITER, random_state=seed).fit(data)
    centres = torch.as_tensor(kmeans.cluster_centers_)
    return Bins(centres, proportions(assign(centres, vectors), bins), len(data))


def assign(centres: Tensor, vectors: Tensor) -> Tensor:
    """Index of the nearest centre (L2) of each vector."""
    return torch.cdist(vectors.double(), centres.double()).argmin(dim=1)


def proportions(labels: Tensor, bins: int) -> Tensor:
    """Share of ``labels`` in each of ``bins`` bins (float64)."""
    return torch.bincount(labels, minlength=bins).double() / max(1, len(labels))


def different_bins(p_ref: Tensor, n_ref: int, p: Tensor, n: int, alpha: float = 0.05) -> int:
    """Bins where two shares differ at level ``alpha``: two-proportion z-test with the pooled share,
    z = (p₁ − p₂) / √(p̂(1 − p̂)(1/n₁ + 1/n₂)), two-tailed. A bin empty in both sets differs in nothing."""
    from scipy.stats import norm

    pooled = (p_ref * n_ref + p * n) / (n_ref + n)
    se = torch.sqrt(pooled * (1 - pooled) * (1 / n_ref + 1 / n))
    tested = se > 0
    z = (p_ref[tested] - p[tested]) / se[tested]
    p_values = 2 * norm.sf(z.abs().numpy())
    return int((p_values < alpha).sum())


def js_divergence(p: Tensor, q: Tensor) -> float:
    """Jensen–Shannon divergence of two histograms (natural log, in [0, ln 2])."""
    m = (p + q) / 2

    def kl(a: Tensor) -> float:
        used = a > 0
        return float((a[used] * torch.log(a[used] / m[used])).sum())

    return 0.5 * (kl(p.double()) + kl(q.double()))


@dataclass(frozen=True)
class NdbResult:
    ndb: int
    js: float
    count: int


def ndb_score(bins: Bins, vectors: Tensor, alpha: float = 0.05) -> NdbResult:
    """NDB and JS of ``vectors`` against the bins' own (training) shares."""
    if len(vectors) == 0:
        return NdbResult(0, math.nan, 0)
    k = len(bins.centres)
    shares = proportions(assign(bins.centres, vectors), k)
    return NdbResult(different_bins(bins.proportions, bins.count, shares, len(vectors), alpha),
                     js_divergence(bins.proportions, shares), len(vectors))


def balanced_index(labels: Tensor, classes: tuple[int, ...], per_class: int | None = None, seed: int = 0) -> Tensor:
    """Indices taking the same number of images of every class in ``classes`` — ``per_class``, or the smallest
    class's count — a ``default_rng([seed, c])`` subset of each class, in ascending order."""
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    count = min(len(m) for m in members) if per_class is None else per_class
    picked = []
    for c, index in zip(classes, members):
        if len(index) < count:
            raise ValueError(f"class {c} has {len(index)} images, fewer than the {count} compared per class")
        chosen = np.random.default_rng([seed, c]).permutation(len(index))[:count]
        picked.append(index[torch.as_tensor(np.sort(chosen))])
    return torch.cat(picked) if picked else torch.zeros(0, dtype=torch.long)


def pixel_vectors(images: Tensor) -> Tensor:
    """Images (float in [0, 1]) as flat float64 vectors: the paper's pixel space."""
    return images.reshape(len(images), -1).double()


_MEMORY: OrderedDict[str, Bins] = OrderedDict()


def clear_memory_cache() -> None:
    _MEMORY.clear()


def training_bins(dataset: Dataset, split: FewShotSplit, bins: int, seed: int = 0, *,
                  cache_root: str | Path | None = None) -> Bins:
    """The bins of ``split``'s novel classes: fitted on their training images (class-balanced, without the held-out
    ones), cached in memory and on disk (``ndb/<key>.pt``) under everything that determines them."""
    classes = tuple(split.task.novel_classes)
    excluded = torch.as_tensor(split.heldout_train_indices, dtype=torch.long)
    key = stable_hash({"version": NDB_VERSION, "dataset": dataset.fingerprint, "classes": list(classes),
                       "excluded": stable_hash(excluded.tolist()), "bins": bins, "seed": seed,
                       "max_iter": KMEANS_MAX_ITER})
    memo_key = f"{key}@{cache_dir('ndb', cache_root)}"
    if memo_key in _MEMORY:
        _MEMORY.move_to_end(memo_key)
        return dataclasses.replace(_MEMORY[memo_key], cache_status="memory")
    path = cache_dir("ndb", cache_root) / f"{key[:32]}.pt"
    with file_lock(path.with_suffix(".lock")):
        stored = read_tensors(path)
        if stored is not None and stored.get("key") == key:
            fitted = Bins(stored["centres"], stored["proportions"], int(stored["count"]), "disk")
        else:
            train = dataset.train
            keep = torch.isin(train.labels, torch.as_tensor(classes))
            keep[excluded] = False
            index = torch.nonzero(keep).flatten()
            index = index[balanced_index(train.labels[index], classes, seed=seed)]
            fitted = fit_bins(pixel_vectors(train.images[index]), bins, seed)
            write_tensors(path, {"key": key, "centres": fitted.centres, "proportions": fitted.proportions,
                                 "count": fitted.count})
    _MEMORY[memo_key] = fitted
    while len(_MEMORY) > MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)
    return fitted
