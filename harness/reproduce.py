"""``harness reproduce``: re-run the trials of a recorded run and say whether the numbers came back.

Two kinds of agreement, because GAN training is chaotic: a float-level difference in one kernel (another CPU's
instruction set, another MKL/oneDNN, another thread count) sends training elsewhere, so

* **bit-identical** results are expected only where the hardware facts (:func:`harness.runtime.host_facts`: CPU
  model, the ISA torch dispatches to, kernel libraries, threads, package versions, commit) match; there a
  difference is a failure to reproduce;
* elsewhere only **statistical** agreement can be checked: per method and headline metric, paired over the trials
  (same trial id, so same seed, shots and split), a Wilcoxon signed-rank test on the differences with a bootstrap CI
  of their mean, Holm-corrected over all (method, metric) tests so that many metrics do not make a false alarm
  likely.

The comparison reads what the run directory holds (``suite.yaml``, ``trials/*/result.json``, ``samples.pt``) and is
independent of how the new trials were run; the CLI command runs them through the normal executor path.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.metrics.value import headline_values
from harness.report.statistics import MIN_WILCOXON_PAIRS as MIN_PAIRS  # below 6 pairs p ≥ 0.0625: cannot reject
from harness.report.statistics import holm
from harness.results import RESULT_FILE, TrialResult
from harness.suite import Suite, SuiteError, TrialSpec, expand

__all__ = ["HARDWARE_KEYS", "MIN_PAIRS", "PairedTest", "Recorded", "Reproduction", "ReproduceError", "compare",
           "hardware_differences", "load_recorded", "paired_test", "render", "select_specs"]

# The facts a float result depends on (see runtime.host_facts); host name and paths do not change a number, nor
# does thread_env: run_trial sets torch's (and so MKL's) thread count itself, so a Ray worker's OMP_NUM_THREADS=1
# and an in-process run without it give bit-identical results (checked on the smoke suite).
HARDWARE_KEYS = ("cpu_model", "torch_cpu_capability", "torch_threads", "torch_interop_threads", "mkl_version",
                 "onednn_version", "mkldnn_enabled", "deterministic_algorithms", "device", "versions", "git_commit")
GPU_KEYS = ("gpu", "cuda_version", "cudnn_version")  # compared only for trials that ran on a GPU
ALPHA = 0.05


class ReproduceError(ValueError):
    """The source cannot be reproduced (not a run directory, no suite or no trial results); the message says why."""


@dataclass
class Recorded:
    """A recorded run: its resolved suite file and its trial results by trial id (with their directories)."""

    path: Path
    suite_file: Path
    results: dict[str, TrialResult]
    directories: dict[str, Path]


def load_recorded(source: Path) -> Recorded:
    """The run directory ``source``; a :class:`ReproduceError` naming what is missing otherwise. A published report
    folder (``reports/<suite>/``) holds tables and sample grids but no trial results, so it cannot be re-run: the
    error says so and names the run directory it was built from when its README records one."""
    source = Path(source)
    if not source.is_dir():
        raise ReproduceError(f"{source}: no such directory")
    results, directories = {}, {}
    for path in sorted(source.glob(f"trials/*/{RESULT_FILE}")):
        r = TrialResult.load(path)
        results[r.trial_id], directories[r.trial_id] = r, path.parent
    if not results:
        hint = "pass the run directory it came from (runs/<suite>/<timestamp>, the one holding trials/)"
        readme = source / "README.md"
        if readme.is_file():
            match = re.search(r"Source: run directory (\S+)", readme.read_text())
            if match:
                hint = f"pass the run directory it was built from: {match.group(1)}"
            raise ReproduceError(f"{source} is a report folder: it holds no trial results (trials/*/{RESULT_FILE}) "
                                 f"to re-run and compare; {hint}")
        raise ReproduceError(f"{source} holds no trial results (trials/*/{RESULT_FILE}); {hint}")
    suite_file = source / "suite.yaml"
    if not suite_file.is_file():
        raise ReproduceError(f"{source} has no suite.yaml (the resolved suite every run directory records)")
    return Recorded(source, suite_file, results, directories)


def select_specs(suite: Suite, recorded: Recorded, methods: list[str] | None = None,
                 seeds: list[int] | None = None) -> tuple[list[TrialSpec], list[str]]:
    """The specs to re-run: the suite's expansion (optionally only some method labels and seeds) restricted to the
    trials recorded ok, and the recorded trials of that selection the expansion no longer produces (their trial ids
    changed: the suite or the code expands differently now, so they cannot be compared)."""
    specs = [s for s in expand(suite, methods) if seeds is None or s.seed in seeds]
    if seeds is not None and not specs:
        raise SuiteError(suite.name, [("seeds", f"none of {seeds} is among the suite's seeds "
                                                f"{list(suite.protocol.seeds)}")])
    wanted = [r for r in recorded.results.values() if r.status == "ok"
              and (methods is None or r.spec.get("label") in methods) and (seeds is None or r.spec.get("seed") in seeds)]
    expanded = {s.trial_id for s in specs}
    ok = {r.trial_id for r in wanted}
    return [s for s in specs if s.trial_id in ok], sorted(r.name for r in wanted if r.trial_id not in expanded)


def _flat(facts: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``keys`` of ``facts``, dicts (versions, thread_env) flattened to ``key.name``."""
    out: dict[str, Any] = {}
    for key in keys:
        value = facts.get(key, "<not recorded>")
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def hardware_differences(recorded: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every hardware fact (:data:`HARDWARE_KEYS`, GPU facts on a GPU) that differs between
    two provenance records; a fact an older result did not record counts as different (it cannot be confirmed)."""
    keys = HARDWARE_KEYS + (GPU_KEYS if "cuda" in str(new.get("device")) + str(recorded.get("device")) else ())
    old, now = _flat(recorded, keys), _flat(new, keys)
    return [f"{k}: {old.get(k, '<absent>')} -> {now.get(k, '<absent>')}"
            for k in sorted(set(old) | set(now)) if old.get(k, "<absent>") != now.get(k, "<absent>")]


def _same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


def result_differences(recorded: TrialResult, new: TrialResult, recorded_dir: Path, new_dir: Path) -> list[str]:
    """What is not bit-identical between two results of one trial: metric values (and their std), final losses and
    the generated samples (``samples.pt``, compared as tensors). Empty for an exact match."""
    out = []
    for key in sorted(set(recorded.metrics) | set(new.metrics)):
        a, b = recorded.metrics.get(key), new.metrics.get(key)
        if a is None or b is None:
            out.append(f"metric {key} {'missing now' if b is None else 'not recorded'}")
        elif not (_same(a.value, b.value) and _same(a.std, b.std)):
            out.append(f"{key} {a.value:.6g} -> {b.value:.6g}")
    for key in sorted(set(recorded.final_losses) | set(new.final_losses)):
        if not _same(recorded.final_losses.get(key), new.final_losses.get(key)):
            out.append(f"final loss {key}")
    out += _sample_differences(recorded_dir / "samples.pt", new_dir / "samples.pt")
    return out


def _sample_differences(recorded: Path, new: Path) -> list[str]:
    if not recorded.is_file() or not new.is_file():
        return [f"samples.pt {'not recorded' if not recorded.is_file() else 'missing now'}"]
    import torch

    from harness.files import load_samples

    a, b = load_samples(recorded), load_samples(new)
    same = all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
    return [] if same else ["samples.pt"]


@dataclass
class PairedTest:
    """A paired comparison of one headline metric: differences ``new - recorded`` over ``n`` pairs."""

    n: int
    mean_difference: float
    ci: tuple[float, float]
    p_value: float | None  # None: fewer than MIN_PAIRS pairs, the test cannot reject
    adjusted_p: float | None = None  # Holm-corrected over all tests of one reproduction

    @property
    def can_reject(self) -> bool:
        return self.p_value is not None


def paired_test(recorded: list[float], new: list[float], *, confidence: float = 0.95, resamples: int = 10_000,
                seed: int = 0) -> PairedTest:
    """The report's paired statistics (:mod:`harness.report.statistics`) on ``new - recorded``: a seeded percentile
    bootstrap CI of the mean difference and a two-sided Wilcoxon signed-rank p-value, so that a report and a
    reproduction judge agreement the same way.

    With fewer than :data:`MIN_PAIRS` pairs no two-sided test at 0.05 can reject, so the p-value is None and only
    the CI is reported. All differences zero: p = 1 (nothing to reject)."""
    from harness.report.statistics import bootstrap_ci, wilcoxon_p

    if len(recorded) != len(new):
        raise ValueError(f"paired test needs pairs: {len(recorded)} recorded values, {len(new)} new")
    d = np.asarray(new, dtype=float) - np.asarray(recorded, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return PairedTest(0, math.nan, (math.nan, math.nan), None)
    ci = (float(d[0]), float(d[0])) if len(d) == 1 else bootstrap_ci(d, confidence, resamples, seed)
    p = None
    if len(d) >= MIN_PAIRS:
        p_value, note = wilcoxon_p(d)
        p = 1.0 if note == "all differences 0" else p_value
    return PairedTest(len(d), float(d.mean()), ci, p)


@dataclass
class TrialComparison:
    name: str
    trial_id: str
    differences: list[str]  # empty: bit-identical
    hardware: list[str]  # empty: the same hardware facts
    failed: str | None = None  # the new trial did not finish ok

    @property
    def exact(self) -> bool:
        return self.failed is None and not self.differences


@dataclass
class Reproduction:
    trials: list[TrialComparison]
    tests: dict[tuple[str, str], PairedTest]  # (method label, headline metric) -> test
    unmatched: list[str] = field(default_factory=list)
    verdict: str = ""
    reproduced: bool = False


def compare(recorded: Recorded, new_run: Path, specs: list[TrialSpec], unmatched: list[str] = ()) -> Reproduction:
    """Compare the re-run ``specs`` in ``new_run`` with ``recorded``: per trial exact or not (and the hardware facts
    that differ), per method and headline metric the paired test, and the verdict."""
    from harness.results import trial_dir_for

    trials, pairs = [], defaultdict(lambda: ([], []))
    for spec in specs:
        old, old_dir = recorded.results[spec.trial_id], recorded.directories[spec.trial_id]
        new_dir = trial_dir_for(new_run, spec)
        path = new_dir / RESULT_FILE
        if not path.is_file():
            trials.append(TrialComparison(spec.name, spec.trial_id, [], [], failed="no result"))
            continue
        new = TrialResult.load(path)
        hardware = hardware_differences(old.provenance, new.provenance)
        if new.status != "ok":
            trials.append(TrialComparison(spec.name, spec.trial_id, [], hardware, failed=new.error or new.status))
            continue
        trials.append(TrialComparison(spec.name, spec.trial_id, result_differences(old, new, old_dir, new_dir),
                                      hardware))
        old_values, new_values = headline_values(old.metrics), headline_values(new.metrics)
        for key in old_values.keys() & new_values.keys():
            pairs[(spec.label, key)][0].append(old_values[key])
            pairs[(spec.label, key)][1].append(new_values[key])
    tests = {k: paired_test(*pairs[k]) for k in sorted(pairs)}
    testable = [k for k, t in tests.items() if t.can_reject]
    for k, p in zip(testable, holm([tests[k].p_value for k in testable])):
        tests[k].adjusted_p = p
    result = Reproduction(trials, tests, list(unmatched))
    result.reproduced, result.verdict = _verdict(result)
    return result


def _verdict(r: Reproduction) -> tuple[bool, str]:
    if r.unmatched:
        return False, (f"NOT REPRODUCED: {len(r.unmatched)} recorded trial(s) have other trial ids under this "
                       f"version (the suite expands differently): {', '.join(r.unmatched)}")
    if not r.trials:
        return False, "NOT REPRODUCED: no recorded trial finished ok in the selection: nothing to compare"
    failed = [t.name for t in r.trials if t.failed]
    if failed:
        return False, f"NOT REPRODUCED: {len(failed)} trial(s) did not finish ok: {', '.join(failed)}"
    if all(t.exact for t in r.trials):
        return True, "REPRODUCED (bit-identical)"
    same_hardware = [t.name for t in r.trials if not t.exact and not t.hardware]
    if same_hardware:
        return False, (f"NOT REPRODUCED: {', '.join(same_hardware)} differ(s) on the same hardware, threads and "
                       "versions, where results must be bit-identical")
    significant = [f"{m}/{k} (Holm p={t.adjusted_p:.3g})" for (m, k), t in r.tests.items()
                   if t.adjusted_p is not None and t.adjusted_p < ALPHA]
    if significant:
        return False, f"NOT REPRODUCED: significant difference on {', '.join(significant)}"
    return True, "REPRODUCED (statistically: no significant difference on any headline metric)"


def render(r: Reproduction) -> list[str]:
    """The report as plain lines: one per trial, one per (method, headline metric), then the verdict."""
    lines = []
    for t in r.trials:
        if t.failed:
            status = f"FAILED ({t.failed})"
        else:
            status = "exact match" if t.exact else f"differs: {'; '.join(t.differences[:4])}" + (
                f" (+{len(t.differences) - 4} more)" if len(t.differences) > 4 else "")
        hardware = "same hardware and versions" if not t.hardware else f"hardware differs: {'; '.join(t.hardware)}"
        lines.append(f"{t.name}: {status}; {hardware}")
    lines += [f"{name}: recorded, but not produced by this suite's expansion now" for name in r.unmatched]
    if r.tests and not all(t.exact for t in r.trials):
        lines.append("paired over trials, new - recorded (mean difference, 95% bootstrap CI, Wilcoxon signed-rank):")
        for (method, key), t in r.tests.items():
            test = (f"p={t.p_value:.3g}, Holm p={t.adjusted_p:.3g}" if t.can_reject else
                    f"{t.n} pair(s) < {MIN_PAIRS}: the test cannot reject, CI only")
            lines.append(f"  {method} {key}: {t.mean_difference:+.4g} [{t.ci[0]:+.4g}, {t.ci[1]:+.4g}], {test}")
    lines.append(r.verdict)
    return lines
