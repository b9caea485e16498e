"""A study's scores: per method, how often people took its images for real, with CIs over raters and images.

* **Screening.** A rater's catch trials (noise) are the only trials whose answer is known to anyone paying
  attention; raters who get fewer than ``min_catch_accuracy`` of theirs right are excluded from every score, and the
  scores say how many were (raters who saw no catch trial — possible on MTurk, where workers pick HITs — are kept and
  counted as unscreened).
* **Rates.** real-vs-fake: a method's *fooling rate* is the share of judgements of its images that said "real"
  (HYPE); the real images' share said "real" is the ceiling a generator can reach, the one to read it against.
  2afc: the *2AFC error*, the share of pairs in which the generated image was chosen as the real one (50 % =
  indistinguishable). Each with a 95 % CI from a crossed bootstrap over raters and images
  (:func:`harness.study.agreement.crossed_bootstrap_rate`): both are samples, and a CI over judgements alone would be
  far too narrow when raters differ.
* **Agreement.** Krippendorff's α (nominal; missing data allowed) over the images' judgements (for 2afc: whether the
  generated image was chosen), and Fleiss' κ over the images that the most common number of raters judged.
* **Comparisons.** Methods paired over raters — each rater's fooling rate of each method, a within-subject design —
  with the automatic metrics' machinery (:func:`harness.report.statistics.compare`: bootstrap CI of the mean
  difference, Wilcoxon signed-rank, Holm across pairs); "tied" when no method beats every other.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.study.agreement import (
    category_counts, crossed_bootstrap_rate, fleiss_kappa, krippendorff_alpha_nominal,
)
from harness.study.db import Judgement, Responses
from harness.study.manifest import CATCH, GENERATED, REAL, Manifest, StudyTrial, fooled

__all__ = ["DEFAULT_MIN_CATCH_ACCURACY", "RateScore", "StudyScores", "score_study"]

DEFAULT_MIN_CATCH_ACCURACY = 0.8


@dataclass(frozen=True)
class RateScore:
    """One rate with its crossed-bootstrap CI: ``label`` a method (or ``real images``), over ``judgements``
    judgements by ``raters`` raters of ``images`` images."""

    label: str
    rate: float
    ci_low: float
    ci_high: float
    judgements: int
    raters: int
    images: int


@dataclass
class StudyScores:
    name: str
    design: str
    score_name: str  # "fooling rate" or "2AFC error"
    min_catch_accuracy: float
    raters_total: int
    raters_kept: int
    raters_unscreened: int
    excluded: dict[str, float]  # rater → catch accuracy
    methods: list[RateScore]
    real: RateScore | None  # real-vs-fake: real images judged real
    catch_accuracy: float  # kept raters, all their catch trials
    alpha: float
    kappa: float
    kappa_items: int
    kappa_raters_per_item: int
    comparisons: list[dict[str, Any]]  # a - b over raters: mean, CI, p, Holm p, n
    best: str | None
    per_run_trial: dict[str, dict[str, Any]]  # run trial id → {method, rate, judgements}
    judgements_used: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(label: str, rows: list[tuple[str, str, float]], **bootstrap: Any) -> RateScore:
    raters = [r for r, _, _ in rows]
    items = [i for _, i, _ in rows]
    outcomes = [y for _, _, y in rows]
    rate, low, high = crossed_bootstrap_rate(raters, items, outcomes, **bootstrap)
    return RateScore(label, rate, low, high, len(rows), len(set(raters)), len(set(items)))


def _item(manifest: Manifest, trial: StudyTrial) -> str:
    """What a judgement is about, for the bootstrap and agreement: the image (real-vs-fake) or the generated image
    of the pair (2afc; its real partner is the same for every rater)."""
    return trial.images[0] if manifest.design == "real-vs-fake" else trial.images[1]


def score_study(manifest: Manifest, responses: Responses, *, min_catch_accuracy: float = DEFAULT_MIN_CATCH_ACCURACY,
                resamples: int = 2000, seed: int = 0) -> StudyScores:
    """Score every judgement in ``responses`` (see the module docstring)."""
    from harness.report.statistics import compare

    trials = manifest.trial_index
    judgements: list[Judgement] = [j for j in responses.judgements() if j.trial in trials]
    catch: dict[str, list[bool]] = defaultdict(list)
    for j in judgements:
        trial = trials[j.trial]
        if trial.kind == CATCH:
            catch[j.rater].append(not fooled(manifest, trial, j.answer, j.shown))
    raters = sorted({j.rater for j in judgements})
    accuracy = {r: sum(v) / len(v) for r, v in catch.items()}
    excluded = {r: a for r, a in accuracy.items() if a < min_catch_accuracy}
    kept = [j for j in judgements if j.rater not in excluded]
    bootstrap = {"resamples": resamples, "seed": seed}

    by_method: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    real_rows: list[tuple[str, str, float]] = []
    per_rater: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    per_trial: dict[str, list[float]] = defaultdict(list)
    ratings: dict[str, list[str]] = defaultdict(list)
    for j in kept:
        trial = trials[j.trial]
        took_real = float(fooled(manifest, trial, j.answer, j.shown))
        if trial.kind == GENERATED:
            by_method[trial.method].append((j.rater, _item(manifest, trial), took_real))
            per_rater[trial.method][j.rater].append(took_real)
            per_trial[trial.run_trial].append(took_real)
        elif trial.kind == REAL:
            real_rows.append((j.rater, _item(manifest, trial), took_real))
        if trial.kind != CATCH:
            ratings[_item(manifest, trial)].append("real" if took_real else "generated")
    methods = [_rate(m, by_method[m], **bootstrap) for m in manifest.methods if by_method.get(m)]
    real = _rate("real images", real_rows, **bootstrap) if real_rows else None

    alpha = krippendorff_alpha_nominal(ratings) if ratings else math.nan
    kappa, kappa_items, per_item = math.nan, 0, 0
    if any(len(v) >= 2 for v in ratings.values()):
        counts = category_counts(ratings, ["real", "generated"])  # the images the most common number judged
        kappa_items = int(counts.shape[0])
        if kappa_items:
            per_item = int(counts.sum(axis=1)[0])
            kappa = fleiss_kappa(counts)

    values = {m: {r: sum(v) / len(v) for r, v in per_rater[m].items()} for m in manifest.methods if per_rater.get(m)}
    comparison = compare(values, higher_is_better=True, **bootstrap) if len(values) > 1 else None
    comparisons = []
    if comparison is not None:
        names = list(comparison.methods)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                d = comparison.pairs[a, b]
                comparisons.append({"a": a, "b": b, "n": d.n, "mean": d.mean, "ci_low": d.ci_low,
                                    "ci_high": d.ci_high, "p": d.p, "p_holm": d.p_holm, "note": d.note})
    method_of = {t.run_trial: t.method for t in manifest.trials if t.kind == GENERATED}
    catch_kept = [ok for r, v in catch.items() if r not in excluded for ok in v]
    return StudyScores(
        name=manifest.name, design=manifest.design,
        score_name="fooling rate" if manifest.design == "real-vs-fake" else "2AFC error",
        min_catch_accuracy=min_catch_accuracy, raters_total=len(raters), raters_kept=len(raters) - len(excluded),
        raters_unscreened=len([r for r in raters if r not in catch]), excluded=excluded, methods=methods, real=real,
        catch_accuracy=sum(catch_kept) / len(catch_kept) if catch_kept else math.nan,
        alpha=alpha, kappa=kappa, kappa_items=kappa_items, kappa_raters_per_item=per_item,
        comparisons=comparisons, best=comparison.best if comparison else None,
        per_run_trial={t: {"method": method_of.get(t), "rate": sum(v) / len(v), "judgements": len(v)}
                       for t, v in sorted(per_trial.items())},
        judgements_used=len(kept),
        provenance={"run": manifest.run, "manifest_sha256": manifest.digest(), "resamples": resamples, "seed": seed,
                    "scored_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
    )
