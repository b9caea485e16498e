"""The study statistics against independent computations: Krippendorff's own example checked by brute force over
pairs of values, Wikipedia's Fleiss example, the exact alpha–kappa identity for complete data, the Wilson formula
and scipy's, and the crossed bootstrap against a plain loop over resamples and by simulation (coverage, width,
rater bias)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from harness.study import agreement
from harness.study.agreement import (
    binomial_ci,
    category_counts,
    crossed_bootstrap_rate,
    fleiss_kappa,
    krippendorff_alpha_nominal,
)

# ------------------------------------------------------------------------------------------------- Krippendorff

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 observers × 12 units, "." missing.
_KRIPPENDORFF_2011 = {
    "A": "1 2 3 3 2 1 4 1 2 . . .",
    "B": "1 2 3 3 2 2 4 1 2 5 . 3",
    "C": ". 3 3 3 2 3 4 2 2 5 1 .",
    "D": "1 2 3 3 2 4 4 1 2 5 1 .",
}


def _units(table: dict[str, str]) -> dict[int, list[int]]:
    rows = [line.split() for line in table.values()]
    return {u: [int(row[u]) for row in rows if row[u] != "."] for u in range(len(rows[0]))}


def _alpha_brute_force(ratings: dict) -> float:
    """1 - D_o / D_e straight from the definition: D_o over the ordered pairs of values within each unit (weighted
    1 / (m_u - 1), divided by n), D_e over all ordered pairs of pairable values (divided by n (n - 1))."""
    units = [list(v) for v in ratings.values() if len(v) >= 2]
    pooled = [x for u in units for x in u]
    n = len(pooled)
    within = sum(sum(a != b for a, b in itertools.permutations(u, 2)) / (len(u) - 1) for u in units)
    across = sum(a != b for a, b in itertools.permutations(pooled, 2))
    return 1 - (within / n) / (across / (n * (n - 1)))


def test_krippendorff_2011_example_matches_literature_and_brute_force():
    ratings = _units(_KRIPPENDORFF_2011)
    alpha = krippendorff_alpha_nominal(ratings)
    assert alpha == pytest.approx(_alpha_brute_force(ratings), abs=1e-12)
    assert round(alpha, 3) == 0.743


def test_krippendorff_missing_marked_none_and_single_ratings_are_dropped():
    ratings = _units(_KRIPPENDORFF_2011)
    with_holes = {u: [*v, None] for u, v in ratings.items()} | {"lonely": [7], "empty": []}
    assert krippendorff_alpha_nominal(with_holes) == pytest.approx(krippendorff_alpha_nominal(ratings), abs=1e-15)


def test_krippendorff_on_random_data_matches_brute_force():
    rng = np.random.default_rng(3)
    ratings = {u: list(rng.choice(["x", "y", "z"], size=rng.integers(0, 6), p=[0.6, 0.3, 0.1])) for u in range(25)}
    assert krippendorff_alpha_nominal(ratings) == pytest.approx(_alpha_brute_force(ratings), abs=1e-12)


def test_krippendorff_degenerate_cases_are_nan_and_perfect_is_one():
    assert math.isnan(krippendorff_alpha_nominal({}))
    assert math.isnan(krippendorff_alpha_nominal({1: ["a"], 2: ["b"]}))  # nothing pairable
    assert math.isnan(krippendorff_alpha_nominal({1: ["a", "a"], 2: ["a", "a", "a"]}))  # D_e = 0
    assert krippendorff_alpha_nominal({1: ["a", "a"], 2: ["b", "b", "b"], 3: ["a", "a"]}) == 1.0


# ------------------------------------------------------------------------------------------------------ Fleiss

# https://en.wikipedia.org/wiki/Fleiss%27_kappa#Worked_example: 10 items, 14 raters each, 5 categories.
_WIKIPEDIA = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                       [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])


def test_fleiss_wikipedia_worked_example():
    # the page's intermediate values: P̄ = 3.780 / 10, P_e = 0.213
    p_bar = np.mean([(row @ row - 14) / (14 * 13) for row in _WIKIPEDIA])
    p_e = float(((_WIKIPEDIA.sum(axis=0) / 140) ** 2).sum())
    assert (round(p_bar, 3), round(p_e, 3)) == (0.378, 0.213)
    kappa = fleiss_kappa(_WIKIPEDIA)
    assert kappa == pytest.approx((p_bar - p_e) / (1 - p_e), abs=1e-12)
    assert round(kappa, 3) == 0.210


def test_fleiss_perfect_agreement_is_one_and_single_category_is_nan():
    assert fleiss_kappa(np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3], [3, 0, 0]])) == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa(np.array([[4, 0], [4, 0]])))


@pytest.mark.parametrize(("counts", "message"), [
    ([[2, 1], [1, 1]], "same number of ratings"),
    ([[1, 0], [0, 1]], "at least 2 ratings"),
    ([2, 1, 3], "2-D"),
    (np.zeros((2, 2, 2)), "2-D"),
    (np.zeros((0, 3)), "at least one item"),
    ([[3, -1], [1, 1]], "non-negative integers"),
    ([[1.5, 0.5], [1, 1]], "non-negative integers"),
])
def test_fleiss_rejects_what_it_cannot_score(counts, message):
    with pytest.raises(ValueError, match=message):
        fleiss_kappa(np.asarray(counts))


@pytest.mark.parametrize("seed", range(5))
def test_alpha_and_kappa_exact_identity_on_complete_data(seed):
    """For N items each rated by n raters, 1 - alpha = (1 - kappa) (nN - 1) / (nN): alpha's coincidences within a
    unit are n P_i, its margins n_c = nN p_c, so alpha = kappa + (1 - P̄) / (nN (1 - P_e))."""
    rng = np.random.default_rng(seed)
    n, n_items, k = rng.integers(2, 7), rng.integers(3, 30), rng.integers(2, 5)
    ratings = {u: list(rng.integers(0, k, size=n)) for u in range(n_items)}
    counts = category_counts(ratings, range(k))
    assert counts.shape == (n_items, k)
    total = n * n_items
    alpha, kappa = krippendorff_alpha_nominal(ratings), fleiss_kappa(counts)
    assert 1 - alpha == pytest.approx((1 - kappa) * (total - 1) / total, abs=1e-12)


def test_alpha_kappa_identity_on_wikipedia_example():
    ratings = {u: [c for c, m in enumerate(row) for _ in range(m)] for u, row in enumerate(_WIKIPEDIA)}
    np.testing.assert_array_equal(category_counts(ratings), _WIKIPEDIA)
    assert 1 - krippendorff_alpha_nominal(ratings) == pytest.approx((1 - fleiss_kappa(_WIKIPEDIA)) * 139 / 140)


def test_category_counts_keeps_the_balanced_subset():
    ratings = _units(_KRIPPENDORFF_2011)  # ratings per unit: 3 4 4 4 4 4 4 4 4 3 2 1
    counts = category_counts(ratings)
    assert counts.shape == (8, 5)  # units 2..9, categories 1..5
    np.testing.assert_array_equal(counts[0], [0, 3, 1, 0, 0])  # unit 2: 2 2 3 2
    np.testing.assert_array_equal(counts[4], [1, 1, 1, 1, 0])  # unit 6: 1 2 3 4
    assert (counts.sum(axis=1) == 4).all()
    three = category_counts(ratings, raters_per_item=3)
    np.testing.assert_array_equal(three, [[3, 0, 0, 0, 0], [0, 0, 0, 0, 3]])  # units 1 and 10
    np.testing.assert_array_equal(category_counts(ratings, [5, 4, 3, 2, 1, 0])[0], [0, 0, 1, 3, 0, 0])
    with pytest.raises(ValueError, match="outside the given categories"):
        category_counts(ratings, [1, 2, 3])
    assert category_counts({1: ["a"], 2: ["b"]}).shape == (0, 2)
    assert category_counts({1: ["a", "b"], 2: ["a", "a", "b"], 3: ["b", "b", "b"]}).shape == (2, 2)  # tie: larger


# ------------------------------------------------------------------------------------------------------ Wilson


def _wilson_by_hand(s: int, n: int, z: float) -> tuple[float, float]:
    p = s / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return centre - half, centre + half


def test_wilson_eight_of_ten():
    low, high = binomial_ci(8, 10)
    assert (low, high) == pytest.approx(_wilson_by_hand(8, 10, 1.959963984540054), abs=1e-12)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)


@pytest.mark.parametrize(("s", "n", "confidence"), [(8, 10, 0.95), (0, 12, 0.95), (12, 12, 0.9), (3, 40, 0.99),
                                                    (1, 1, 0.95)])
def test_wilson_matches_scipy(s, n, confidence):
    stats = pytest.importorskip("scipy.stats")
    reference = stats.binomtest(s, n).proportion_ci(confidence_level=confidence, method="wilson")
    assert binomial_ci(s, n, confidence) == pytest.approx((reference.low, reference.high), abs=1e-12)


def test_wilson_edges():
    assert all(math.isnan(x) for x in binomial_ci(0, 0))
    assert binomial_ci(0, 5)[0] == 0.0 and binomial_ci(5, 5)[1] == 1.0
    with pytest.raises(ValueError):
        binomial_ci(6, 5)


# ------------------------------------------------------------------------------------------- crossed bootstrap


def _study(n_raters: int, n_items: int, rate, rng: np.random.Generator, per_rater: int | None = None):
    """Every rater judges ``per_rater`` random items (all of them if None); ``rate(rater)`` their success rate."""
    raters, items, outcomes = [], [], []
    for r in range(n_raters):
        seen = range(n_items) if per_rater is None else rng.choice(n_items, size=per_rater, replace=False)
        for i in seen:
            raters.append(f"r{r}")
            items.append(("img", int(i)))
            outcomes.append(float(rng.random() < rate(r)))
    return raters, items, outcomes


def _loop_bootstrap(raters, items, outcomes, resamples, seed, confidence=0.95, resample_raters=True):
    """The definition, one resample at a time: draw raters and items with replacement, weight every judgement by
    how often its rater and its item were drawn."""
    rng = np.random.default_rng(seed)
    rater_ids, r = np.unique(np.asarray(raters, dtype=object).astype(str), return_inverse=True)
    item_ids, i = np.unique([repr(x) for x in items], return_inverse=True)
    y = np.asarray(outcomes, dtype=float)
    rates = []
    for _ in range(resamples):
        w = np.bincount(rng.choice(len(rater_ids), len(rater_ids)), minlength=len(rater_ids))
        if not resample_raters:
            w = np.ones(len(rater_ids))
        v = np.bincount(rng.choice(len(item_ids), len(item_ids)), minlength=len(item_ids))
        weight = w[r] * v[i]
        if weight.sum() > 0:
            rates.append((weight * y).sum() / weight.sum())
    tail = (1 - confidence) / 2 * 100
    return tuple(np.percentile(rates, [tail, 100 - tail]))


def test_bootstrap_matches_a_plain_loop_over_resamples():
    rng = np.random.default_rng(11)
    raters, items, outcomes = _study(12, 30, lambda r: 0.2 + 0.05 * r, rng, per_rater=20)
    mean, low, high = crossed_bootstrap_rate(raters, items, outcomes, resamples=4000, seed=1)
    assert mean == pytest.approx(np.mean(outcomes))
    loop_low, loop_high = _loop_bootstrap(raters, items, outcomes, resamples=4000, seed=2)
    # Monte Carlo error of a 2.5 % quantile from 4000 resamples: ~0.002 here
    assert (low, high) == pytest.approx((loop_low, loop_high), abs=0.012)
    assert low < mean < high


def test_bootstrap_ci_contains_mean_and_constant_rate_is_exact():
    rng = np.random.default_rng(0)
    raters, items, outcomes = _study(8, 20, lambda r: 0.4, rng)
    mean, low, high = crossed_bootstrap_rate(raters, items, outcomes)
    assert low <= mean <= high and low < high
    assert crossed_bootstrap_rate(raters, items, [1.0] * len(outcomes)) == (1.0, 1.0, 1.0)
    assert crossed_bootstrap_rate(raters, items, [0] * len(outcomes)) == (0.0, 0.0, 0.0)


def test_bootstrap_degenerate_inputs():
    assert all(math.isnan(x) for x in crossed_bootstrap_rate([], [], []))
    mean, low, high = crossed_bootstrap_rate(["a", "a", "a"], [1, 1, 1], [1, 0, 0])
    assert mean == pytest.approx(1 / 3) and math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="length"):
        crossed_bootstrap_rate(["a"], [1, 2], [1, 0])
    with pytest.raises(ValueError, match="finite"):
        crossed_bootstrap_rate(["a", "b"], [1, 2], [1, math.nan])


def test_bootstrap_with_one_rater_resamples_items_only():
    rng = np.random.default_rng(5)
    raters, items, outcomes = _study(1, 200, lambda r: 0.3, rng)
    _, low, high = crossed_bootstrap_rate(raters, items, outcomes, resamples=4000)
    assert (low, high) == pytest.approx(_loop_bootstrap(raters, items, outcomes, 4000, seed=9), abs=0.012)
    assert high - low > 0.05  # items alone still give the binomial spread: ~2 · 1.96 · sqrt(0.21 / 200) = 0.127


def test_bootstrap_drops_resamples_without_any_judgement():
    # rater a judged only item x (1), rater b only item y (0): drawing {a, a} with {y, y} leaves nothing to score
    with np.errstate(all="raise"):
        mean, low, high = crossed_bootstrap_rate(["a", "b"], ["x", "y"], [1, 0], resamples=500)
    assert mean == 0.5 and (low, high) == (0.0, 1.0)
    _, low, high = crossed_bootstrap_rate(["a", "b"], ["x", "y"], [1, 1], resamples=500)
    assert (low, high) == (1.0, 1.0)


def test_bootstrap_is_seeded_and_chunking_changes_nothing():
    rng = np.random.default_rng(2)
    raters, items, outcomes = _study(7, 13, lambda r: 0.5, rng, per_rater=9)
    one = crossed_bootstrap_rate(raters, items, outcomes, resamples=301, seed=4)
    assert crossed_bootstrap_rate(raters, items, outcomes, resamples=301, seed=4) == one
    assert crossed_bootstrap_rate(raters, items, outcomes, resamples=301, seed=5) != one
    for chunk in (1, 64, 1000, 10**9):  # 1 float: one resample a chunk; 10**9: all resamples at once
        assert crossed_bootstrap_rate(raters, items, outcomes, resamples=301, seed=4, _chunk_floats=chunk) == one
    assert agreement.CHUNK_FLOATS <= 5e7


def test_bootstrap_covers_the_true_rate():
    covered = 0
    for study in range(50):
        rng = np.random.default_rng(100 + study)
        raters, items, outcomes = _study(20, 30, lambda r: 0.3, rng)
        _, low, high = crossed_bootstrap_rate(raters, items, outcomes, resamples=400, seed=study)
        covered += low <= 0.3 <= high
    assert covered >= 45


def test_bootstrap_interval_shrinks_with_more_raters_and_items():
    def width(n_raters, n_items):
        widths = []
        for seed in range(3):
            raters, items, outcomes = _study(n_raters, n_items, lambda r: 0.3, np.random.default_rng(seed))
            _, low, high = crossed_bootstrap_rate(raters, items, outcomes, resamples=500)
            widths.append(high - low)
        return np.mean(widths)

    small, large = width(8, 10), width(32, 40)
    assert large < 0.7 * small  # ~1/2 expected: both terms of the variance fall by 4


def test_crossed_interval_is_wider_than_items_only_when_raters_differ():
    rng = np.random.default_rng(7)
    raters, items, outcomes = _study(10, 60, lambda r: 0.1 if r % 2 else 0.9, rng)
    mean, low, high = crossed_bootstrap_rate(raters, items, outcomes, resamples=2000)
    items_low, items_high = _loop_bootstrap(raters, items, outcomes, 2000, seed=0, resample_raters=False)
    assert items_low <= mean <= items_high
    # rater means 0.1 / 0.9 over 10 raters: sd of their mean ~0.4 / sqrt(10) = 0.13; images alone ~0.02
    assert high - low > 3 * (items_high - items_low)


@pytest.mark.timeout(120)
def test_bootstrap_handles_a_hundred_thousand_judgements():
    rng = np.random.default_rng(0)
    n = 100_000
    raters, items = rng.integers(0, 400, n), rng.integers(0, 5000, n)
    mean, low, high = crossed_bootstrap_rate(raters.tolist(), items.tolist(), (rng.random(n) < 0.3).tolist(),
                                             resamples=200)
    assert low < mean < high and high - low < 0.02
