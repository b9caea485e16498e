"""The numbers a report shows: mean and Student-t confidence interval over seeds, and how a mean ± CI is printed.

Apart from the builder so the same statistics serve every table and figure, and can be checked on their own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["fmt", "mean_ci"]


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

