"""The numbers a human rating study reports: rates with confidence intervals, and how far raters agree.

A study samples both its raters and its images, so a fooling rate varies with either: its CI must resample both
(a crossed bootstrap, as HYPE does), or a few lenient raters look like a good generator. Agreement (Krippendorff's
alpha, Fleiss' kappa) says whether raters saw the same thing; without it a rate near 50 % cannot tell "looks real"
from "raters guessed". Wilson intervals serve small per-cell counts such as catch-trial accuracy.

Judgements are (rater, item, outcome or category) triples; pure numpy and scipy, no pandas.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["binomial_ci", "category_counts", "crossed_bootstrap_rate", "fleiss_kappa", "krippendorff_alpha_nominal"]

# Floats held by each (resamples × observed (rater, item) cells) array of the crossed bootstrap: ~67 MB, two alive
# at a time, whatever the number of judgements.
CHUNK_FLOATS = 2**23


# ------------------------------------------------------------------------------------------------------ rates


def crossed_bootstrap_rate(raters: Sequence[Hashable], items: Sequence[Hashable], outcomes: Sequence[float], *,
                           confidence: float = 0.95, resamples: int = 2000, seed: int = 0,
                           _chunk_floats: int | None = None) -> tuple[float, float, float]:
    """(mean of ``outcomes``, low, high): the rate with a percentile CI from a two-way (crossed) bootstrap over
    raters and items, judgement ``j`` being ``outcomes[j]`` (0/1 or any float) given by ``raters[j]`` to
    ``items[j]``.

    Each resample draws the distinct raters with replacement and, independently, the distinct items, giving
    multiplicities ``w_r`` and ``v_i``; its rate is ``sum(w_r * v_i * y_ri) / sum(w_r * v_i)`` over the observed
    judgements. Both are drawn because both are samples: resampling images alone treats the raters as fixed and
    gives too narrow an interval when raters differ (one lenient rater lifts every image they see). Resamples whose
    denominator is 0 (in a sparse design, no drawn rater judged a drawn item) are dropped; the CI is NaN if all are.
    The interval errs wide: variation that belongs to neither rater nor item is counted by both resamplings (Owen
    2007, "The pigeonhole bootstrap"), the safe side when raters and images are both in question.

    With one distinct rater every ``w`` is 1, so only items are resampled (an items-only bootstrap: the interval
    says nothing about other raters); with one item, only raters. (nan, nan, nan) without judgements; (mean, nan,
    nan) with one rater *and* one item, there being nothing to resample. The generator is seeded with ``seed`` so
    a rebuilt report prints the same interval, and the result does not depend on the chunking (``_chunk_floats``,
    for tests; default :data:`CHUNK_FLOATS`) that keeps memory bounded for large studies.
    """
    y = np.asarray(outcomes, dtype=float).reshape(-1)
    if not (len(raters) == len(items) == len(y)):
        raise ValueError(f"raters, items and outcomes differ in length: {len(raters)}, {len(items)}, {len(y)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), not {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    if len(y) == 0:
        return math.nan, math.nan, math.nan
    if not np.all(np.isfinite(y)):
        raise ValueError("outcomes must be finite")
    mean = float(y.mean())
    r = _codes(raters)
    i = _codes(items)
    n_raters, n_items = int(r.max()) + 1, int(i.max()) + 1
    if n_raters < 2 and n_items < 2:
        return mean, math.nan, math.nan

    # Judgements of the same (rater, item) cell share their weight w_r * v_i: sum them first.
    cells, cell_of = np.unique(r * n_items + i, return_inverse=True)
    cell_sum = np.bincount(cell_of, weights=y, minlength=len(cells))
    cell_count = np.bincount(cell_of, minlength=len(cells)).astype(float)
    cell_r, cell_i = cells // n_items, cells % n_items

    # Separate streams for raters and items, each drawn row by row, so the chunk size cannot change the draws.
    rater_rng, item_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    per_chunk = max(1, int(_chunk_floats or CHUNK_FLOATS) // max(len(cells), n_raters, n_items))
    rates = []
    for start in range(0, resamples, per_chunk):
        rows = min(per_chunk, resamples - start)
        w = _multiplicities(rater_rng, rows, n_raters)
        v = _multiplicities(item_rng, rows, n_items)
        weight = w[:, cell_r]
        weight *= v[:, cell_i]
        numerator, denominator = weight @ cell_sum, weight @ cell_count
        kept = denominator > 0
        rates.append(numerator[kept] / denominator[kept])
    rate = np.concatenate(rates)
    if len(rate) == 0:
        return mean, math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(rate, [tail, 100 - tail])
    return mean, float(low), float(high)


def _codes(values: Sequence[Hashable]) -> np.ndarray:
    """0-based codes of ``values``, in order of first appearance (hashable values need not be orderable)."""
    index: dict[Hashable, int] = {}
    return np.fromiter((index.setdefault(x, len(index)) for x in values), dtype=np.int64, count=len(values))


def _multiplicities(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """``rows`` × ``n``: how often each of ``n`` units is drawn in each of ``rows`` draws of ``n`` with
    replacement."""
    drawn = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
    return np.bincount(drawn.ravel(), minlength=rows * n).reshape(rows, n).astype(float)


def binomial_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``successes`` out of ``n``; (nan, nan) for n = 0. Wilson rather than the normal
    approximation because per-cell counts are small and rates near 0 or 1 (catch trials): there the Wald interval
    collapses to a point or leaves [0, 1], Wilson's stays inside and keeps close to its nominal coverage."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), not {confidence}")
    if n == 0:
        return math.nan, math.nan
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# -------------------------------------------------------------------------------------------------- agreement
#
# ratings[item] lists the categories the raters gave that item, one entry per rating; None marks a missing rating
# (a convenience for tables with holes) and counts as no rating.


def krippendorff_alpha_nominal(ratings: Mapping[Hashable, Sequence[Hashable]]) -> float:
    """Krippendorff's alpha for nominal categories, ``1 - D_o / D_e``, from the coincidence matrix (Krippendorff
    2011, "Computing Krippendorff's Alpha-Reliability"). Alpha rather than kappa for a study's own data: any number
    of raters per item, missing ratings allowed, and a small-sample correction. Items with fewer than 2 ratings
    cannot be paired and are dropped. 1 is perfect agreement, 0 agreement at chance.

    NaN when fewer than 2 pairable values remain, or when the expected disagreement ``D_e`` is 0 (every pairable
    value the same category): nothing to tell agreement from chance with.
    """
    counts, _ = _unit_counts(ratings)
    m = counts.sum(axis=1)
    counts = counts[m >= 2]
    m = m[m >= 2]
    total = float(m.sum())  # n: pairable values
    if total < 2:
        return math.nan
    # Coincidences o_cc (ordered pairs within a unit, each unit weighted 1 / (m_u - 1)) and margins n_c.
    agreeing = float(((counts * (counts - 1)).sum(axis=1) / (m - 1)).sum())
    margins = counts.sum(axis=0).astype(float)
    chance = float((margins * (margins - 1)).sum())
    expected = total * (total - 1) - chance  # n(n - 1) D_e: ordered pairs of different values across units
    if expected <= 0:
        return math.nan
    observed = total - agreeing  # n D_o: coincidences of different values
    return 1 - (total - 1) * observed / expected


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of an items × categories matrix of counts, every item rated by the same n ≥ 2 raters (not
    necessarily the same ones): ``(P̄ - P_e) / (1 - P_e)``. The measure most rating-study papers report, for a
    balanced design; :func:`krippendorff_alpha_nominal` covers missing ratings. For complete data the two are
    tied exactly: ``1 - alpha = (1 - kappa) (nN - 1) / (nN)`` over N items.

    NaN when chance agreement ``P_e`` is 1 (every rating in one category). ``ValueError`` when ``counts`` is not
    2-D, has no item, holds negative or non-integer counts, or its rows do not all sum to the same n ≥ 2.
    """
    x = np.asarray(counts, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"counts must be a 2-D items × categories matrix, got {x.ndim} dimension(s)")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"counts must have at least one item and one category, got shape {x.shape}")
    if not np.all(np.isfinite(x)) or np.any(x < 0) or np.any(x != np.round(x)):
        raise ValueError("counts must be non-negative integers")
    n_per_item = x.sum(axis=1)
    n = n_per_item[0]
    if np.any(n_per_item != n):
        raise ValueError("every item must have the same number of ratings (row sums differ: "
                         f"{sorted(set(n_per_item.astype(int).tolist()))}); use krippendorff_alpha_nominal")
    if n < 2:
        raise ValueError(f"each item needs at least 2 ratings, got {int(n)}")
    p_item = ((x * x).sum(axis=1) - n) / (n * (n - 1))
    p_category = x.sum(axis=0) / x.sum()
    p_bar, p_e = float(p_item.mean()), float((p_category**2).sum())
    if p_e >= 1:
        return math.nan
    return (p_bar - p_e) / (1 - p_e)


def category_counts(ratings: Mapping[Hashable, Sequence[Hashable]], categories: Sequence[Hashable] | None = None,
                    *, raters_per_item: int | None = None) -> np.ndarray:
    """The items × categories count matrix of the items with exactly ``raters_per_item`` ratings, rows in the
    order of ``ratings``, columns in the order of ``categories``: the balanced subset :func:`fleiss_kappa` needs.

    ``categories`` defaults to the categories seen, sorted (in order of appearance if they do not sort); a rating
    outside a given ``categories`` is a ``ValueError``. ``raters_per_item`` defaults to the most common number of
    ratings among items with at least 2 (the larger on a tie), so the subset keeps the most items Fleiss can use;
    no such item gives a 0-row matrix.
    """
    rows = [[c for c in values if not _missing(c)] for values in ratings.values()]
    seen = list(dict.fromkeys(c for row in rows for c in row))
    if categories is None:
        try:
            order = sorted(seen)
        except TypeError:
            order = seen
    else:
        order = list(categories)
    column = {c: k for k, c in enumerate(order)}
    unknown = [c for c in seen if c not in column]
    if unknown:
        raise ValueError(f"ratings outside the given categories: {unknown!r}")
    full = np.zeros((len(rows), len(order)), dtype=np.int64)
    for k, row in enumerate(rows):
        for c in row:
            full[k, column[c]] += 1
    m = full.sum(axis=1)
    if raters_per_item is None:
        frequency = Counter(int(k) for k in m if k >= 2)
        if not frequency:
            return np.zeros((0, len(order)), dtype=np.int64)
        raters_per_item = max(frequency, key=lambda k: (frequency[k], k))
    return full[m == raters_per_item]


def _unit_counts(ratings: Mapping[Hashable, Sequence[Hashable]]) -> tuple[np.ndarray, list[Hashable]]:
    """(items × categories counts, the categories in order of first appearance), None entries left out."""
    seen: dict[Hashable, int] = {}
    coded = [[seen.setdefault(c, len(seen)) for c in values if not _missing(c)] for values in ratings.values()]
    counts = np.zeros((len(coded), len(seen)), dtype=np.int64)
    for row, codes in enumerate(coded):
        np.add.at(counts[row], codes, 1)
    return counts, list(seen)


def _missing(value: Any) -> bool:
    return value is None
