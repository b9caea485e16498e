"""Every metric's definition pinned on inputs small enough to compute by hand: each test fails under a plausible
mutation of its metric (named in the test), which the statistical tests elsewhere could let through — e.g.
memorisation's ratio of medians replaced by a ratio of means moves no test of copies vs unseen images, but moves the
values here.

Nothing here trains more than one tiny classifier (downstream accuracy) and nothing loads a dataset.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from harness.api import LabeledImages
from harness.metrics import METRICS, EvaluationConfig
from harness.metrics.accuracy import AccuracyResult, train_and_test
from harness.metrics.context import EvaluationContext
from harness.metrics.fidelity import fid, inception_score, kid, precision_recall
from harness.metrics.memorisation import memorisation, memorisation_by_class, nearest_distances
from harness.metrics.reference import Reference


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _column(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(-1, 1)


# ---------------------------------------------------------------------------------------------------- IS


def test_is_is_exp_of_the_mean_kl_to_the_split_marginal():
    """p = (1, 0) and (½, ½): marginal (¾, ¼), KL = log 4/3 and ½ log 4/3, IS = (4/3)^(3/4). Mutations caught: no
    exp (IS = ¾ log 4/3), KL(marginal ‖ p), the marginal over all splits instead of each split's."""
    confident, even, other = [0.0, -30.0], [0.0, 0.0], [-30.0, 0.0]  # -30: a share of 1e-13, not an exact 0
    one_split = torch.tensor([confident, even], dtype=torch.float64)
    assert inception_score(one_split, splits=1, shuffle=False)[0] == pytest.approx((4 / 3) ** 0.75, rel=1e-9)
    # two splits: the second is two identical predictions (IS 1); the mean and the population std of the splits
    two_splits = torch.tensor([confident, even, other, other], dtype=torch.float64)
    mean, std = inception_score(two_splits, splits=2, shuffle=False)
    assert mean == pytest.approx(((4 / 3) ** 0.75 + 1) / 2, rel=1e-9)
    assert std == pytest.approx(((4 / 3) ** 0.75 - 1) / 2, rel=1e-9)  # population std (ddof 0), not ddof 1


# ---------------------------------------------------------------------------------------------------- FID


def test_fid_on_a_hand_computed_pair_of_sets():
    """a: the corners of a 2×2 square (mean (1, 1), unbiased covariance 4/3·I); b = 2a + (5, 0) (mean (7, 2),
    covariance 16/3·I). FID = |Δμ|² + tr(Σa + Σb − 2(ΣaΣb)^½) = 37 + 40/3 − 32/3 = 37 + 8/3. Mutations caught: the
    biased covariance (ddof 0 gives 39), the square root left out, the mean term squared per coordinate sum."""
    a = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    b = 2 * a + torch.tensor([5.0, 0.0])
    assert fid(a, b) == pytest.approx(37 + 8 / 3, rel=1e-9)


def test_fid_real_floor_is_the_fid_of_two_disjoint_stratified_halves():
    labels = torch.tensor([3] * 5 + [4] * 4)
    features = torch.randn(9, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = Reference("k", labels, torch.zeros(9, 10), features, torch.zeros(0, dtype=torch.long), torch.zeros(0, 2))
    first, second = ref.halves(None)
    assert len(first) == len(second) == 4  # 2 of class 3 (of 5) and 2 of class 4 in each half
    assert set(first.tolist()).isdisjoint(second.tolist())
    assert sorted(labels[first].tolist()) == sorted(labels[second].tolist()) == [3, 3, 4, 4]
    assert ref.fid_floor(None) == fid(features[first], features[second])


# ---------------------------------------------------------------------------------------------------- KID


def test_kid_on_a_hand_computed_pair_of_sets():
    """x = {0, 1}, y = {1, 2}, k(a, b) = (a·b / d + 1)³: unbiased MMD² = off-diagonal means of Kxx (1) and Kyy (27)
    minus twice the mean of Kxy (2 · 37/4) = 9.5. Mutations caught: the biased estimator (diagonals kept: 15.75),
    gamma = 1 instead of 1/d (the 2-d copy of the same points would change), another degree or coef0."""
    mean, std, size = kid(_column(0, 1), _column(1, 2), subset_size=2, subsets=1)
    assert (mean, std, size) == (pytest.approx(9.5, rel=1e-12), 0.0, 2)
    doubled = kid(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 1.0], [2.0, 2.0]]), 2, 1)[0]
    assert doubled == pytest.approx(9.5, rel=1e-12)  # x·y / d is the same: gamma is 1/d


# ---------------------------------------------------------------------------------------------------- PRC


def test_precision_recall_on_a_hand_computed_case():
    """Real {0, 1, 2, 3} (k = 1 radii: 1), generated {0.5, 10} (radii 9.5): precision ½ (0.5 is within 1 of 0, 10 is
    not), recall 1 (every real point is within 9.5 of 0.5), F = 2/3. Mutation caught: the sets swapped (P 1, R ½)."""
    assert precision_recall(_column(0.5, 10), _column(0, 1, 2, 3), neighborhood=1, equal_sizes=False) == \
        pytest.approx((0.5, 1.0, 2 / 3))


# ---------------------------------------------------------------------------------------------------- class consistency


def _context(metrics: list[str], labels: list[int], logits: torch.Tensor, real_labels: list[int],
             real_logits: torch.Tensor) -> EvaluationContext:
    """An evaluation context whose evaluator outputs and reference are given (nothing trained or extracted)."""
    samples = LabeledImages(torch.zeros(len(labels), 1, 2, 2), torch.tensor(labels))
    split = SimpleNamespace(task=SimpleNamespace(novel_classes=(3, 4)))
    ctx = EvaluationContext(EvaluationConfig(metrics=metrics), None, split, samples, torch.device("cpu"))
    ctx.__dict__.update(  # the cached properties, set instead of computed
        evaluator=SimpleNamespace(num_classes=10), _extracted=(logits, torch.zeros(len(labels), 2)),
        reference=Reference("k", torch.tensor(real_labels), real_logits, torch.zeros(len(real_labels), 2),
                            torch.zeros(0, dtype=torch.long), torch.zeros(0, 2)))
    return ctx


def _predicting(classes: list[int]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(classes), 10).float()


def test_class_consistency_pools_samples_not_class_shares():
    """Class 3: 2 of 2 samples recognised, class 4: 1 of 4; pooled = 3/6 (the mean of the class shares would be
    0.625); the real reference: 2 of 3 held-out images. Mutation caught: pooling by averaging class shares."""
    ctx = _context(["class_consistency"], [3, 3, 4, 4, 4, 4], _predicting([3, 3, 4, 0, 0, 0]), [3, 4, 4],
                   _predicting([3, 4, 3]))
    values = METRICS.get("class_consistency").compute(ctx)
    assert values["class_consistency/class_3"].value == 1.0
    assert values["class_consistency/class_4"].value == 0.25
    assert values["class_consistency"].value == 0.5
    assert values["class_consistency_real"].value == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------------- memorisation


def test_memorisation_is_a_ratio_of_medians():
    """Medians, not means: d_gen {1, 2, 9} over d_real {2, 2, 2} is 2/2 = 1 (means: 4/2 = 2); d_gen {2, 2, 2} over
    d_real {1, 2, 9} is 1 (means: ½). Mutations caught: either median replaced by a mean."""
    assert memorisation(torch.tensor([1.0, 2.0, 9.0]), torch.tensor([2.0, 2.0, 2.0])).ratio == 1.0
    assert memorisation(torch.tensor([2.0, 2.0, 2.0]), torch.tensor([1.0, 2.0, 9.0])).ratio == 1.0


def test_memorisation_close_share_counts_samples_strictly_below_the_real_quantile():
    """The 0.25 quantile of d_real {1, 2, 3, 4, 5} is 2 (linear interpolation); of d_gen {1, 1.5, 2, 3}, two are
    below it: ½. Mutations caught: ≤ instead of < (¾), another quantile, the share of real images."""
    result = memorisation(torch.tensor([1.0, 1.5, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), quantile=0.25)
    assert result.close_share == 0.5 and result.num_samples == 4


def test_memorisation_distance_is_to_the_nearest_shot():
    assert nearest_distances(_column(0), _column(1, 5)).tolist() == [1.0]  # nearest, not the mean (3)


def test_pooled_memorisation_is_the_ratio_of_pooled_medians_with_each_class_own_threshold():
    """Class 3: d_gen {3, 3}, d_real {2, 2}; class 4: d_gen {6, 6, 6}, d_real {10, 10, 10} (ratios 1.5 and 0.6).
    Pooled ratio = median {3, 3, 6, 6, 6} / median {2, 2, 10, 10, 10} = 0.6 (the mean of the class ratios: 1.05);
    pooled close share at q = ½ with each class's own threshold (2 and 10) = 3/5 (one pooled threshold, 10: 1)."""
    samples = _column(3, -3, 6, 6, -6)
    labels = torch.tensor([3, 3, 4, 4, 4])
    shots, shot_labels = _column(0, 0), torch.tensor([3, 4])
    real = {3: torch.tensor([2.0, 2.0], dtype=torch.float64), 4: torch.tensor([10.0, 10.0, 10.0],
                                                                               dtype=torch.float64)}
    out = memorisation_by_class(samples, labels, shots, shot_labels, real, (3, 4), quantile=0.5)
    assert (out[3].ratio, out[4].ratio) == (1.5, 0.6)
    assert out[None].ratio == 0.6
    assert out[None].close_share == pytest.approx(3 / 5)
    assert out[None].num_samples == 5


# ---------------------------------------------------------------------------------------------------- accuracy


def test_accuracy_mean_and_population_std_over_classifier_seeds():
    mean, std = AccuracyResult.mean_std([0.5, 0.7])
    assert mean == pytest.approx(0.6) and std == pytest.approx(0.1)  # ddof 0: 0.1, not 0.141
    assert AccuracyResult.mean_std([0.8]) == (0.8, 0.0) and math.isnan(AccuracyResult.mean_std([])[0])


def test_accuracy_trains_on_the_samples_with_their_labels_when_the_fraction_is_one():
    """generated_fraction 1: every batch is generated samples, none of the shots. Samples that are the test images
    with their labels swapped (3 ↔ 4) then teach the swapped labels: accuracy near 0, far below chance; with the
    true labels near 1. Mutations caught: ignoring the fraction (shots in the batches), or the samples' labels."""
    g = torch.Generator().manual_seed(0)
    template = torch.zeros(2, 1, 8, 8)
    template[0, :, :, :4], template[1, :, :, 4:] = 1.0, 1.0  # class 3: left half lit, class 4: right half
    labels = torch.tensor([3, 4]).repeat(20)
    test = LabeledImages((template.repeat(20, 1, 1, 1) + 0.1 * torch.randn(40, 1, 8, 8, generator=g)).clamp(0, 1),
                         labels)
    settings = EvaluationConfig.Accuracy(steps=40, batch_size=16, generated_fraction=1.0, width=4)
    shots = LabeledImages(template, torch.tensor([3, 4]))
    right = train_and_test(shots, test, (3, 4), settings, seed=0, generated=test)
    swapped = train_and_test(shots, test, (3, 4), settings, seed=0, generated=LabeledImages(test.images, 7 - labels))
    assert right > 0.9 and swapped < 0.1, (right, swapped)
