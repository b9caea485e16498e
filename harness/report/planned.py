"""Planned comparisons: the few pairs of a run's methods a question is about, tested without the rest.

The report compares every pair of methods and Holm-corrects over all of them, which is right for "which method is
best" and far too conservative for a question fixed before the run — "does bf16 change DCGAN's results?" is two pairs
(fp32 vs bf16, fp32 vs bf16 + channels-last), not the 36 of a nine-entry suite. ``harness compare RUN_DIR --pair A:B
…`` tests only the named pairs: per metric, each pair's difference over the (class split, seed) pairs both have
(bootstrap CI, Wilcoxon signed-rank; :func:`harness.report.statistics.paired_difference`), Holm-corrected across the
named pairs of that metric; each side's collapse rate; and the ratio of their fit times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd

from harness.metrics.table import collapsed, direction_of
from harness.report.load import ReportData
from harness.report.statistics import ALPHA, PairedDifference, fmt, fmt_difference, holm, mean_ci, paired_difference

__all__ = ["PlannedComparison", "planned_comparisons", "render_markdown"]


@dataclass(frozen=True)
class PlannedComparison:
    metric: str
    higher_is_better: bool | None
    a_mean: tuple[int, float, float]  # (n, mean, CI half-width)
    b_mean: tuple[int, float, float]
    difference: PairedDifference  # a - b, p_holm over the named pairs of this metric

    @property
    def verdict(self) -> str:
        d = self.difference
        if self.higher_is_better is None or math.isnan(d.p_holm) or d.p_holm >= ALPHA:
            return "tied"
        if d.ci_low > 0 or d.ci_high < 0:
            a_better = (d.mean > 0) == self.higher_is_better
            return f"{d.a if a_better else d.b} better"
        return "tied"


def _per_pair(data: ReportData, label: str, key: str, shots: int | None) -> dict[tuple[str, int], float]:
    t = data.trials[(data.trials.label == label) & (data.trials.status == "ok")]
    if shots is not None:
        t = t[t.shots == shots]
    v = data.values[(data.values.kind.isin(["metric", "time"])) & (data.values.key == key)]
    merged = t.merge(v, on="trial_id")
    return {(str(r.split), int(r.seed)): float(r.value) for r in merged.itertuples()}


def collapse_rate(data: ReportData, label: str) -> tuple[int, int]:
    """(collapsed, judged) trials of ``label`` by the registry's collapse rules."""
    import json

    t = data.trials[(data.trials.label == label) & (data.trials.status == "ok")]
    metrics = data.values[data.values.kind == "metric"]
    verdicts = []
    for row in t.itertuples():
        values = dict(metrics[metrics.trial_id == row.trial_id][["key", "value"]].itertuples(index=False))
        verdicts.append(collapsed(values, len(json.loads(row.novel_classes or "[]"))))
    known = [v for v in verdicts if v is not None]
    return sum(known), len(known)


def planned_comparisons(data: ReportData, pairs: list[tuple[str, str]], metrics: list[str],
                        shots: int | None = None) -> list[PlannedComparison]:
    """Every named pair on every metric (see the module docstring); ``ValueError`` naming an unknown label."""
    labels = set(data.trials.label)
    for a, b in pairs:
        for side in (a, b):
            if side not in labels:
                from harness.registry import did_you_mean

                raise ValueError(f"--pair: {side!r} is not a method label of the run{did_you_mean(side, labels)}")
    out = []
    for metric in metrics:
        direction = direction_of(metric)
        higher = None if direction is None or direction.target is not None else direction.higher_is_better
        family = []
        for a, b in pairs:
            va, vb = _per_pair(data, a, metric, shots), _per_pair(data, b, metric, shots)
            family.append((va, vb, paired_difference(va, vb, (a, b))))
        corrected = holm([d.p for _, _, d in family])
        for (va, vb, d), p in zip(family, corrected, strict=True):
            out.append(PlannedComparison(metric, higher, mean_ci(va.values()), mean_ci(vb.values()),
                                         replace(d, p_holm=p)))
    return out


def fit_time_ratio(data: ReportData, a: str, b: str) -> tuple[int, float]:
    """(pairs, median of fit_s(b) / fit_s(a)) over the (split, seed) pairs both have: < 1 means b fits faster."""
    ta, tb = _per_pair(data, a, "fit_s", None), _per_pair(data, b, "fit_s", None)
    ratios = sorted(tb[k] / ta[k] for k in ta if k in tb and ta[k] > 0)
    if not ratios:
        return 0, math.nan
    return len(ratios), float(pd.Series(ratios).median())


def render_markdown(data: ReportData, pairs: list[tuple[str, str]], results: list[PlannedComparison]) -> str:
    lines = ["| pair | metric | n | mean a | mean b | a − b [95 % CI] Holm p | verdict |",
             "|---|---|--:|--:|--:|--:|---|"]
    for r in results:
        d = r.difference
        lines.append(f"| {d.a} vs {d.b} | {r.metric} | {d.n} | {fmt(r.a_mean[1], r.a_mean[2])} | "
                     f"{fmt(r.b_mean[1], r.b_mean[2])} | {fmt_difference(d)} | {r.verdict} |")
    lines += ["", "| pair | collapsed a | collapsed b | fit time b ÷ a (median over pairs) |", "|---|--:|--:|--:|"]
    for a, b in pairs:
        ca, cb = collapse_rate(data, a), collapse_rate(data, b)
        n, ratio = fit_time_ratio(data, a, b)
        lines.append(f"| {a} vs {b} | {ca[0]}/{ca[1]} | {cb[0]}/{cb[1]} | {ratio:.3f} (n={n}) |")
    lines += ["", "Differences paired over (class split, seed); bootstrap CI of the mean difference, Wilcoxon "
              "signed-rank p, Holm-corrected across the named pairs of each metric; \"tied\" unless Holm p < 0.05 "
              "and the CI excludes 0. Collapse: the registry's collapse rules (class consistency)."]
    return "\n".join(lines) + "\n"
