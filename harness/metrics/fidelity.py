"""The torch-fidelity bridge: the domain classifier as a registered feature extractor, and IS / FID / KID /
precision-recall computed with torch-fidelity's own functions from features extracted once.

The harness extracts (logits, features) of a sample set in one batched pass (:meth:`Evaluator.extract`) and feeds the
arrays to ``torch_fidelity.metric_*`` (``isc_features_to_metric``, ``fid_features_to_statistics`` /
``fid_statistics_to_metric``, ``prc_features_to_metric``) — the code ``torch_fidelity.calculate_metrics`` runs after
its own extraction — so every metric of a trial shares one forward pass and the held-out reference features are
cached. KID is torch-fidelity's estimator (same kernel, subset draws and unbiased MMD) evaluated from kernel sums,
which is several times faster for 5 000 samples (see :func:`kid`).

Importing this module registers :class:`DomainFeatureExtractor` as ``fewshot-domain-classifier``, which makes a
cached domain classifier usable from torch-fidelity directly::

    import torch_fidelity
    from harness.metrics.fidelity import DOMAIN_EXTRACTOR, UInt8Images
    torch_fidelity.calculate_metrics(
        input1=UInt8Images(samples), input2=UInt8Images(real), feature_extractor=DOMAIN_EXTRACTOR,
        feature_extractor_weights_path=evaluator.path, isc=True, fid=True, kid=True, prc=True,
        cuda=torch.cuda.is_available(), cache=False, save_cpu_ram=True, verbose=False)

Conventions (torch-fidelity's): IS shuffles with ``rng_seed`` (default 2020) before splitting; KID draws
``subsets`` random subsets of ``subset_size`` from each set with the same seed; precision/recall take the GENERATED
features first and the REAL ones second.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset as TorchDataset

FIDELITY_SEED = 2020  # torch-fidelity's default rng_seed
DOMAIN_EXTRACTOR = "fewshot-domain-classifier"


def _quiet(**kwargs: object) -> dict[str, object]:
    """torch-fidelity kwargs: never verbose, never CUDA unless asked, never its on-disk cache."""
    return {"verbose": False, "cuda": False, "cache": False, **kwargs}


# ------------------------------------------------------------------------------------------- torch-fidelity plugin


class UInt8Images(TorchDataset):
    """A torch Dataset of 8-bit images (C×H×W uint8 tensors), the input form torch-fidelity expects."""

    def __init__(self, images: Tensor) -> None:
        if images.dtype != torch.uint8:
            images = images.float().clamp(0, 1).mul(255).round().to(torch.uint8)
        self.images = images.cpu()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]


def _extractor_base():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    return FeatureExtractorBase


def _make_extractor_class():
    from torch_fidelity.helpers import vassert

    from harness.metrics.evaluator import load_domain_classifier_file

    class DomainFeatureExtractor(_extractor_base()):
        """A cached domain classifier (``feature_extractor_weights_path`` = its ``domain-<hash>.pt``) as a
        torch-fidelity feature extractor. Features: ``logits`` (IS) and ``features`` (the penultimate layer; FID, KID,
        PRC). Accepts torch-fidelity's uint8 N×C×H×W batches; RGB input to a grey-scale classifier is averaged over
        channels, grey input to an RGB one repeated, and other sizes are resized bilinearly."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            vassert(feature_extractor_weights_path is not None,
                    f"{name} needs feature_extractor_weights_path: a domain classifier file of the harness cache")
            self.net, arch = load_domain_classifier_file(feature_extractor_weights_path)
            self.image_shape = tuple(arch["image_shape"])

        @staticmethod
        def get_provided_features_list():
            return "logits", "features"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 1, 28, 28, dtype=torch.uint8)

        def forward(self, x):
            vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "Expecting image as torch.Tensor with dtype=uint8")
            vassert(x.dim() == 4, f"Input is not B×C×H×W: {tuple(x.shape)}")
            x = x.float() / 255
            channels, height, width = self.image_shape
            if x.shape[1] != channels:
                x = x.mean(1, keepdim=True) if channels == 1 else x[:, :1].repeat(1, channels, 1, 1)
            if tuple(x.shape[2:]) != (height, width):
                x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
                x = x.clamp(0, 1).mul(255).round().div(255)
            logits, features = self.net(x)
            out = {"logits": logits, "features": features}
            return tuple(out[name] for name in self.features_list)

    return DomainFeatureExtractor


_EXTRACTOR_CLASS = None


def register_domain_extractor() -> type:
    """Register :class:`DomainFeatureExtractor` with torch-fidelity as ``fewshot-domain-classifier`` (idempotent)."""
    global _EXTRACTOR_CLASS
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if _EXTRACTOR_CLASS is None:
        _EXTRACTOR_CLASS = _make_extractor_class()
    if DOMAIN_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(DOMAIN_EXTRACTOR, _EXTRACTOR_CLASS)
    return FEATURE_EXTRACTORS_REGISTRY[DOMAIN_EXTRACTOR]


# ------------------------------------------------------------------------------------------- metrics from features


def inception_score(logits: Tensor, splits: int = 10, seed: int = FIDELITY_SEED, shuffle: bool = True
                    ) -> tuple[float, float]:
    """IS (mean, std over ``splits``) of ``logits`` (N×K) — torch-fidelity's ``isc_features_to_metric``.

    ``splits`` is capped at N. ``shuffle=False`` keeps the given order (splits are consecutive chunks).
    """
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    n = len(logits)
    if n == 0:
        return math.nan, math.nan
    out = isc_features_to_metric(logits.detach().cpu().double(), min(splits, n), shuffle, seed)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def fid_statistics(features: Tensor) -> dict[str, np.ndarray]:
    """Mean and covariance (float64) — torch-fidelity's ``fid_features_to_statistics``."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(features.detach().cpu().double())


def frechet_distance(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """FID between two sets of statistics — torch-fidelity's ``fid_statistics_to_metric``; NaN if either set had
    fewer than two images (no covariance)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    if not (np.all(np.isfinite(stats_1["sigma"])) and np.all(np.isfinite(stats_2["sigma"]))):
        return math.nan
    return float(fid_statistics_to_metric(stats_1, stats_2, False)[KEY_METRIC_FID])


def fid(features_1: Tensor, features_2: Tensor) -> float:
    if len(features_1) < 2 or len(features_2) < 2:
        return math.nan
    return frechet_distance(fid_statistics(features_1), fid_statistics(features_2))


KID_FULL_KERNEL_MAX = 4_000_000  # kernel entries (float64: 32 MB) up to which a kernel matrix is computed once


def _poly_kernel(x: Tensor, y: Tensor, degree: int = 3, coef0: float = 1.0) -> Tensor:
    """torch-fidelity's ``kernel_poly`` (gamma = 1 / dim), in torch so that it follows torch's thread setting."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def _kernel_sums(a: Tensor, b: Tensor, index_a: list[Tensor], index_b: list[Tensor]) -> Tensor:
    """For each subset s: the sum of kernel(a[index_a[s]], b[index_b[s]]) over all pairs (float64)."""
    if len(a) * len(b) <= KID_FULL_KERNEL_MAX:
        kernel = _poly_kernel(a, b)
        ma = torch.zeros(len(index_a), len(a), dtype=a.dtype)
        mb = torch.zeros(len(index_b), len(b), dtype=b.dtype)
        for s, (ia, ib) in enumerate(zip(index_a, index_b)):
            ma[s, ia] = 1
            mb[s, ib] = 1
        return ((ma @ kernel) * mb).sum(1)
    return torch.stack([_poly_kernel(a[ia], b[ib]).sum() for ia, ib in zip(index_a, index_b)])


def kid(features_1: Tensor, features_2: Tensor, subset_size: int = 1000, subsets: int = 100,
        seed: int = FIDELITY_SEED) -> tuple[float, float, int]:
    """KID (mean, std over ``subsets``, the subset size used) with the subset size bounded by both set sizes
    (``min(subset_size, n1, n2)``); NaN below two images.

    The estimator of torch-fidelity's ``kid_features_to_metric`` — polynomial kernel of degree 3, gamma 1/dim, coef0
    1; the same ``RandomState(seed)`` subset draws; ``mmd2``'s unbiased estimate per subset — computed in float64
    from kernel sums (each kernel matrix once where it fits in memory) instead of three kernel matrices per subset;
    ``tests/test_metrics.py`` checks it against ``kid_features_to_metric``.
    """
    n1, n2 = len(features_1), len(features_2)
    m = min(subset_size, n1, n2)
    if m < 2:
        return math.nan, math.nan, m
    x, y = features_1.detach().cpu().double(), features_2.detach().cpu().double()
    rng = np.random.RandomState(seed)
    index_1, index_2 = [], []
    for _ in range(subsets):  # the draw order of torch-fidelity: subset of set 1, then of set 2
        index_1.append(torch.as_tensor(rng.choice(n1, m, replace=False)))
        index_2.append(torch.as_tensor(rng.choice(n2, m, replace=False)))
    diag_1 = (x.pow(2).sum(1) / x.shape[1] + 1) ** 3
    diag_2 = (y.pow(2).sum(1) / y.shape[1] + 1) ** 3
    off_11 = _kernel_sums(x, x, index_1, index_1) - torch.stack([diag_1[i].sum() for i in index_1])
    off_22 = _kernel_sums(y, y, index_2, index_2) - torch.stack([diag_2[i].sum() for i in index_2])
    cross = _kernel_sums(x, y, index_1, index_2)
    values = ((off_11 + off_22) / (m * (m - 1)) - 2 * cross / (m * m)).numpy()
    return float(np.mean(values)), float(np.std(values)), m


def precision_recall(generated: Tensor, real: Tensor, neighborhood: int = 3, seed: int = FIDELITY_SEED,
                     equal_sizes: bool = True) -> tuple[float, float, float]:
    """(precision, recall, F-score) of Kynkäänniemi et al. — torch-fidelity's ``prc_features_to_metric``.

    The k-NN radii depend on the set sizes, so with ``equal_sizes`` the larger set is subsampled (seeded) to the size
    of the smaller one, as in the paper. ``neighborhood`` is capped at n - 1; NaN below two images per set.
    """
    from torch_fidelity.metric_prc import (
        KEY_METRIC_F_SCORE,
        KEY_METRIC_PRECISION,
        KEY_METRIC_RECALL,
        prc_features_to_metric,
    )

    generated, real = generated.detach().cpu().float(), real.detach().cpu().float()
    if equal_sizes and len(generated) != len(real):
        n = min(len(generated), len(real))
        rng = np.random.RandomState(seed)
        if len(generated) > n:
            generated = generated[torch.as_tensor(np.sort(rng.choice(len(generated), n, replace=False)))]
        else:
            real = real[torch.as_tensor(np.sort(rng.choice(len(real), n, replace=False)))]
    n = min(len(generated), len(real))
    if n < 2:
        return math.nan, math.nan, math.nan
    out = prc_features_to_metric(generated, real, **_quiet(prc_neighborhood=min(neighborhood, n - 1),
                                                           save_cpu_ram=False))
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL], out[KEY_METRIC_F_SCORE]


register_domain_extractor()  # importing this module makes `feature_extractor="fewshot-domain-classifier"` available
