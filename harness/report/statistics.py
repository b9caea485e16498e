"""The numbers a report shows: mean and Student-t confidence interval over seeds, and how a mean ± CI is printed;
paired comparisons of methods (bootstrap CI of the mean difference, Wilcoxon signed-rank p-value, Holm correction
across the pairs of a metric) and the "best" method they allow.

Apart from the builder so the same statistics serve every table and figure, and can be checked on their own (pure
numpy and scipy, no pandas).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

__all__ = ["ALPHA", "MIN_WILCOXON_PAIRS", "Comparison", "PairedDifference", "bootstrap_ci", "compare", "fmt",
           "fmt_difference", "holm", "mean_ci", "paired_difference", "wilcoxon_p"]


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[int, float, float]:
    """(n, mean, half-width of the ``confidence`` CI from Student's t); half-width NaN when n < 2."""
    xs = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    n = len(xs)
    if n == 0:
        return 0, math.nan, math.nan
    mean = sum(xs) / n
    if n < 2:
        return n, mean, math.nan
    from scipy import stats

    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return n, mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)


def median_iqr(values: Iterable[float]) -> tuple[int, float, float, float]:
    """(n, median, first quartile, third quartile) of the finite ``values`` (linear interpolation, numpy's default):
    beside a mean ± CI, what a reader needs when one collapsed seed drags a mean — the median barely moves."""
    v = np.asarray([x for x in values if _finite(x)], dtype=float)
    if len(v) == 0:
        return 0, math.nan, math.nan, math.nan
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    return len(v), float(median), float(q1), float(q3)


def fmt(mean: float, ci: float = math.nan) -> str:
    """``mean ± ci`` rounded to the CI's second significant digit (a CI says how many digits mean anything);
    a lone mean to 4 significant digits; "–" for no value."""
    if mean is None or math.isnan(mean):
        return "–"
    if math.isnan(ci):
        return f"{mean:.4g}"
    if ci == 0:
        return f"{mean:.4g} ± 0"
    decimals = min(6, max(0, 1 - math.floor(math.log10(abs(ci)))))
    return f"{mean:.{decimals}f} ± {ci:.{decimals}f}"


# ----------------------------------------------------------------------------------------- paired comparisons
#
# Two methods run on the same (class split, seed) share the few-shot task: the same shots, the same held-out images,
# the same reference statistics. Differences paired on it cancel what the task itself contributes (an easy split
# lifts every method), so they see differences an unpaired comparison of two means, each with its own spread, would
# call noise. Methods are compared only on the pairs both have.

MIN_WILCOXON_PAIRS = 6  # exact two-sided p of n pairs is at least 2 / 2**n: 0.0625 for n = 5, 0.031 for n = 6
ALPHA = 0.05


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` paired over ``n`` (split, seed) pairs: the mean difference with a percentile bootstrap CI, the
    Wilcoxon signed-rank p-value (NaN when it cannot be computed, ``note`` saying why) and ``p_holm``, that p
    corrected by Holm's method across the pairs of methods compared on the same metric."""

    a: str
    b: str
    n: int
    mean: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float = math.nan
    note: str = ""

    def beats(self, higher_is_better: bool, alpha: float = ALPHA) -> bool:
        """Whether ``a`` is better than ``b`` beyond the noise: Holm p < ``alpha`` and a CI that excludes 0 on the
        side of the metric's direction. Both, because the p-value tests the median difference and the CI the mean:
        a winner must be one by either reading."""
        if math.isnan(self.p_holm) or self.p_holm >= alpha:
            return False
        return self.ci_low > 0 if higher_is_better else self.ci_high < 0

    def flipped(self) -> PairedDifference:
        """``b - a``: the same test, the CI mirrored."""
        return replace(self, a=self.b, b=self.a, mean=-self.mean, ci_low=-self.ci_high, ci_high=-self.ci_low)


def bootstrap_ci(differences: Sequence[float], confidence: float = 0.95, resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``differences``: ``resamples`` resamples with replacement, from a
    generator seeded with ``seed`` so a report rebuilt from the same results prints the same interval. (NaN, NaN)
    below 2 values: one pair says nothing about the spread. Bootstrap rather than Student t because a difference
    of two trials' metrics (FID especially) is skewed, and a percentile interval follows the skew."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def wilcoxon_p(differences: Sequence[float]) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p-value of ``differences`` (:func:`scipy.stats.wilcoxon`, its defaults: exact
    for small n without ties, zero differences dropped) and a note: why it is NaN (no pairs, every difference 0),
    or that fewer than :data:`MIN_WILCOXON_PAIRS` pairs cannot reach p < 0.05. Signed ranks rather than a paired
    t-test: a few seeds cannot show that differences are normal, and one diverged seed would dominate a t-test."""
    d = np.asarray(differences, dtype=float)
    if len(d) == 0:
        return math.nan, "no pairs"
    if not np.any(d != 0):
        return math.nan, "all differences 0"
    from scipy import stats

    p = float(stats.wilcoxon(d).pvalue)
    note = f"{len(d)} < {MIN_WILCOXON_PAIRS} pairs: p cannot reach {ALPHA}" if len(d) < MIN_WILCOXON_PAIRS else ""
    return p, note


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``pvalues`` (one family: every pair of methods on one metric), in their
    order. The i-th smallest of m p-values becomes max over j ≤ i of min(1, (m − j + 1) · p_(j)). NaN p-values
    (untestable pairs) stay NaN and do not count in m. Holm rather than Bonferroni: the same guarantee on the
    family-wise error, never less power."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    running = 0.0
    for rank, index in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return [float(x) for x in out]


def paired_difference(a: Mapping[Hashable, float], b: Mapping[Hashable, float], names: tuple[str, str] = ("a", "b"),
                      **bootstrap: Any) -> PairedDifference:
    """``a - b`` over the pair keys (e.g. (split, seed)) both have a finite value for; ``p_holm`` left NaN (it
    needs the family: :func:`compare`)."""
    keys = sorted((k for k in a if k in b and _finite(a[k]) and _finite(b[k])), key=repr)
    d = np.array([float(a[k]) - float(b[k]) for k in keys])
    low, high = bootstrap_ci(d, **bootstrap)
    p, note = wilcoxon_p(d)
    return PairedDifference(names[0], names[1], len(d), float(d.mean()) if len(d) else math.nan, low, high, p,
                            note=note)


@dataclass(frozen=True)
class Comparison:
    """Every pair of methods on one metric: ``pairs[(a, b)]`` is ``a - b`` (both orders present), Holm-corrected
    across the unordered pairs; ``best`` the method that beats every other one (None: tied, no winner beyond the
    noise)."""

    methods: tuple[str, ...]
    pairs: dict[tuple[str, str], PairedDifference]
    higher_is_better: bool
    best: str | None


def compare(values: Mapping[str, Mapping[Hashable, float]], higher_is_better: bool,
            alpha: float = ALPHA, **bootstrap: Any) -> Comparison:
    """All pairwise :func:`paired_difference` of ``values`` (method → {pair key: value}), Holm-corrected together,
    and the best method: one whose difference to *every* other method is significant in the metric's direction
    (:meth:`PairedDifference.beats`). With one method there is no comparison and no best."""
    methods = tuple(values)
    upper = [paired_difference(values[a], values[b], (a, b), **bootstrap)
             for i, a in enumerate(methods) for b in methods[i + 1:]]
    upper = [replace(d, p_holm=p) for d, p in zip(upper, holm([d.p for d in upper]), strict=True)]
    pairs = {(d.a, d.b): d for d in upper} | {(d.b, d.a): d.flipped() for d in upper}
    winners = [m for m in methods if len(methods) > 1
               and all(pairs[m, o].beats(higher_is_better, alpha) for o in methods if o != m)]
    return Comparison(methods, pairs, higher_is_better, winners[0] if winners else None)


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def fmt_difference(d: PairedDifference) -> str:
    """A matrix cell: ``-1.0 [-1.5, -0.5] p=0.031`` (mean and CI to the CI width's second significant digit, the
    Holm p to two), ``(n=1)`` when there is no interval, "–" without pairs."""
    if d.n == 0:
        return "–"
    width = d.ci_high - d.ci_low
    if math.isnan(width):
        return f"{d.mean:.4g} (n={d.n})"
    p = "–" if math.isnan(d.p_holm) else f"{d.p_holm:.2g}"
    if width == 0:  # every resample the same: a constant difference
        return f"{d.mean:.4g} [{d.ci_low:.4g}, {d.ci_high:.4g}] p={p}"
    decimals = min(6, max(0, 1 - math.floor(math.log10(abs(width)))))
    return f"{d.mean:.{decimals}f} [{d.ci_low:.{decimals}f}, {d.ci_high:.{decimals}f}] p={p}"
