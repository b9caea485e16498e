"""Re-scoring a finished run from its saved samples, without training: `harness evaluate RUN_DIR`.

Every trial saves all its samples (``samples.pt``, 8-bit, class-major). Adding a metric or changing the evaluator
then means reading them back, not retraining: :func:`plan` finds each finished trial's samples and refuses — before
anything is computed — when a file is missing or holds fewer samples per class than asked; :func:`rescore_trial`
evaluates them exactly as the trial did (same split, same evaluator cache, the trial's thread count, the same
``harness.metrics.evaluate``), so re-scoring an unchanged run gives back the stored values bit for bit on the same
machine. :func:`record_version` writes the values into ``result.json`` as a new metrics version beside the earlier
ones (``TrialResult.metric_versions``; see :mod:`harness.results`).

Which values are the trial's current ``metrics`` afterwards: the re-scored metrics replace their own earlier keys;
the other metrics stay — unless they were computed from another evaluator's features than the re-scored ones (a
different evaluator hash), so that the current values never mix two evaluators. Nothing is deleted: every earlier
value stays in its version.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.metrics.table import METRICS
from harness.metrics.value import metrics_to_json
from harness.results import RESULT_FILE, TrialResult

if TYPE_CHECKING:
    from harness.api import LabeledImages
    from harness.data import Dataset
    from harness.metrics import Evaluation, EvaluationConfig
    from harness.suite import TrialSpec

SOURCE = "harness evaluate"
EVALUATOR_PROVENANCE = ("evaluator", "evaluator_hash", "evaluator_test_accuracy", "evaluator_cache", "evaluator_path")


class RescoreError(ValueError):
    """The run cannot be re-scored as asked; ``problems`` are (where, what) pairs, each naming a file or option."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{where}: {what}" for where, what in problems))


@dataclass
class PlannedTrial:
    """One finished trial to re-score: its directory, stored result, spec, the evaluation asked for and its samples
    (the first ``config.samples_per_class`` of each class)."""

    directory: Path
    result: TrialResult
    spec: TrialSpec
    config: EvaluationConfig
    samples: LabeledImages


@dataclass
class Plan:
    trials: list[PlannedTrial] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (trial, why): not finished, nothing to score


def evaluation_config(base: EvaluationConfig, metrics: list[str] | None, evaluator: str | None,
                      samples_per_class: int | None) -> EvaluationConfig:
    """The trial's evaluation config with the options given (validated again: e.g. class consistency needs the
    domain classifier)."""
    from harness.metrics import EvaluationConfig

    data = base.model_dump()
    if metrics is not None:
        data["metrics"] = metrics
    if evaluator is not None:
        data["evaluator"] = evaluator
        if evaluator != "inception_v3":
            data["inception_weights"] = None
    if samples_per_class is not None:
        data["samples_per_class"] = samples_per_class
    return EvaluationConfig.model_validate(data)


def load_samples(path: Path) -> LabeledImages:
    """A trial's ``samples.pt`` (uint8 images) as float images in [0, 1] — the 8-bit levels the trial evaluated."""
    import torch

    from harness.api import LabeledImages

    from harness.files import load_samples as read_samples
    from harness.results import recompute_advice

    stored = read_samples(path, advice=recompute_advice(Path(path).parent))
    images = stored["images"]
    images = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    return LabeledImages(images, stored["labels"].long())


def first_per_class(samples: LabeledImages, classes: tuple[int, ...], count: int, where: str) -> LabeledImages:
    """The first ``count`` samples of each class, class-major; ``ValueError`` naming ``where`` and the class when one
    has fewer (the trial saved fewer samples than asked) or when the classes differ from the trial's."""
    import torch

    from harness.api import LabeledImages

    saved = sorted(set(samples.labels.tolist()))
    if saved != sorted(classes):
        raise ValueError(f"{where}: holds samples of classes {saved}, the trial's novel classes are {list(classes)}")
    parts = []
    for c in classes:
        index = torch.nonzero(samples.labels == c).flatten()
        if len(index) < count:
            raise ValueError(f"{where}: saved {len(index)} samples of class {c}, fewer than the {count} per class "
                             "asked (--samples-per-class, or the suite's evaluation.samples_per_class)")
        parts.append(samples.subset(index[:count]))
    return LabeledImages.concat(parts)


def plan(run_dir: Path, metrics: list[str] | None = None, evaluator: str | None = None,
         samples_per_class: int | None = None) -> Plan:
    """Every finished trial of ``run_dir`` with its samples and evaluation config; :class:`RescoreError` listing
    every problem (unknown metric, missing or short samples file, an evaluator or weights file unavailable here)
    before anything is computed."""
    import pydantic

    from harness.metrics import check_evaluator
    from harness.registry import UnknownNameError, did_you_mean
    from harness.suite import TrialSpec
    from harness.trial import SAMPLES_FILE

    run_dir = Path(run_dir)
    paths = sorted(run_dir.glob(f"trials/*/{RESULT_FILE}"))
    if not paths:
        raise RescoreError([(str(run_dir), "no trials/*/result.json: not a run directory, or no trial finished")])
    problems: list[tuple[str, str]] = []
    for i, name in enumerate(metrics or []):
        if name not in METRICS:
            problems.append((f"--metrics[{i}]", str(UnknownNameError(
                f"unknown metric {name!r}{did_you_mean(name, METRICS.names())}; registered: "
                f"{', '.join(METRICS.names())}"))))
    if problems:
        raise RescoreError(problems)
    out, checked = Plan(), set()
    for path in paths:
        where = str(path.parent / SAMPLES_FILE)
        try:
            result = TrialResult.load(path)
            spec = TrialSpec.model_validate(result.spec)
        except (ValueError, pydantic.ValidationError) as exc:
            problems.append((str(path), str(exc).splitlines()[0]))
            continue
        if result.status != "ok":
            out.skipped.append((result.name, f"status {result.status}"))
            continue
        try:
            config = evaluation_config(spec.evaluation, metrics, evaluator, samples_per_class)
        except pydantic.ValidationError as exc:
            problems.append((f"{path}: evaluation", "; ".join(e["msg"] for e in exc.errors())))
            continue
        if not config.metrics:
            problems.append((str(path), "the trial's suite evaluates no metric: name some with --metrics"))
            continue
        key = config.model_dump_json()
        if key not in checked:
            checked.add(key)
            try:
                check_evaluator(config)
            except (ValueError, OSError) as exc:
                problems.append((getattr(exc, "field", "evaluation.evaluator"), str(exc)))
        if not (path.parent / SAMPLES_FILE).is_file():
            problems.append((where, "missing: the trial saved no samples, so it cannot be re-scored (re-run it)"))
            continue
        try:
            samples = first_per_class(load_samples(path.parent / SAMPLES_FILE), spec.novel_classes,
                                      config.samples_per_class, where)
        except (ValueError, RuntimeError, OSError) as exc:
            problems.append((where, str(exc).removeprefix(f"{where}: ")))
            continue
        out.trials.append(PlannedTrial(path.parent, result, spec, config, samples))
    if problems:
        raise RescoreError(problems)
    return out


class Datasets:
    """Each dataset a run's trials name, loaded once."""

    def __init__(self) -> None:
        self._loaded: dict[str, Dataset] = {}

    def get(self, spec: TrialSpec) -> Dataset:
        from harness.data import load_dataset

        key = spec.dataset.model_dump_json()
        if key not in self._loaded:
            self._loaded[key] = load_dataset(spec.dataset)
        return self._loaded[key]


def rescore_trial(trial: PlannedTrial, datasets: Datasets, device: str = "auto") -> Evaluation:
    """Evaluate one planned trial's samples as its run did: its split, its thread count, its device choice."""
    import torch

    from harness.metrics import evaluate
    from harness.runtime import resolve_device
    from harness.trial import split_for

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(trial.spec.resources.cpu)))
    try:
        dataset = datasets.get(trial.spec)
        return evaluate(trial.config, dataset, split_for(trial.spec, dataset), trial.samples,
                        device=resolve_device(device, trial.spec.resources.gpu))
    finally:
        torch.set_num_threads(threads)


def _version_entry(number: int, source: str, config_metrics: list[str], samples_per_class: int,
                   provenance: dict[str, Any], values: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"version": number, "source": source, "metrics": list(config_metrics),
            "samples_per_class": samples_per_class,
            **{k: provenance.get(k) for k in ("evaluator", "evaluator_hash", "evaluator_test_accuracy")},
            "values": values, **extra}


def record_version(trial: PlannedTrial, evaluation: Evaluation, seconds: float) -> dict[str, Any]:
    """Add ``evaluation`` to the trial's result as a new metrics version (the trial's own values become version 1
    the first time) and update its current values (see the module docstring); returns the new version's entry.
    The caller writes the result."""
    from harness.runtime import git_commit

    result, spec = trial.result, trial.spec
    versions = result.metric_versions
    if not versions:
        versions.append(_version_entry(1, "trial", spec.evaluation.metrics, spec.evaluation.samples_per_class,
                                       result.provenance, metrics_to_json(result.metrics),
                                       finished_at=result.wall_times.get("finished_at"),
                                       git_commit=result.provenance.get("git_commit")))
    entry = _version_entry(len(versions) + 1, SOURCE, trial.config.metrics, trial.config.samples_per_class,
                           evaluation.provenance, metrics_to_json(evaluation.metrics),
                           created_at=dt.datetime.now().isoformat(timespec="seconds"), git_commit=git_commit(),
                           seconds=round(seconds, 3))
    versions.append(entry)
    new_hash, old_hash = evaluation.provenance.get("evaluator_hash"), result.provenance.get("evaluator_hash")
    same_evaluator = new_hash is None or old_hash is None or new_hash == old_hash
    recomputed = set(trial.config.metrics)
    kept = {key: value for key, value in result.metrics.items() if value.metric not in recomputed
            and (same_evaluator or value.metric not in METRICS or not METRICS.get(value.metric).needs_evaluator)}
    result.metrics = {**kept, **evaluation.metrics}
    result.provenance.update({k: evaluation.provenance[k] for k in EVALUATOR_PROVENANCE
                              if evaluation.provenance.get(k) is not None})
    result.provenance["metrics_version"] = entry["version"]
    return entry


def rescore(trial: PlannedTrial, datasets: Datasets, device: str = "auto") -> tuple[Evaluation, dict[str, Any]]:
    """Evaluate, record the version and write ``result.json``: (the evaluation, its version entry)."""
    started = time.perf_counter()
    evaluation = rescore_trial(trial, datasets, device)
    entry = record_version(trial, evaluation, time.perf_counter() - started)
    trial.result.write(trial.directory)
    return evaluation, entry

