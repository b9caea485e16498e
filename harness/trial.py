"""``run_trial``: the one function every executor calls (fit → sample → evaluate → record).

It is pure given its spec: it seeds everything from the spec, reads only the dataset it is handed (or loads the one
the spec names) and writes only under its own trial directory. Executors differ in *where* trials run, never in
*what* a trial computes.
"""

from __future__ import annotations

import json
import math
import random
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torchvision.utils import save_image

from harness.api import Budget, FewShotTask, FitHooks, GenerativeMethod, LabeledImages, TrialDiverged
from harness.data import Dataset, FewShotSplit, load_dataset, make_split
from harness.registry import METHODS
from harness.runtime import derive_seed, git_commit, host_facts, package_versions, resolve_device, seed_everything
from harness.results import RESULT_FILE, TrialResult, trial_dir_for
from harness.suite import TrialSpec

if TYPE_CHECKING:
    from harness.tracking import TrackingContext

CHECKPOINT_FILE = "checkpoint.pt"
SAMPLE_CHUNK = 500


class TrialStopped(Exception):
    """The executor's scheduler stopped the trial early (a sweep's ASHA): not a failure. ``run_trial`` records the
    trial as ``stopped``, with the intermediate evaluations it reached, and returns."""


@dataclass(frozen=True)
class IntermediateEvaluation:
    """Evaluate ``metrics`` on the model being fitted after every ``every`` steps before the last (the final
    evaluation covers that one) and pass them to ``report(steps done, values)``: what a sweep's early stopping compares
    trials on. ``report`` may raise :class:`TrialStopped`.

    The evaluation samples in the generator's eval mode and under saved random states, so a trial's training
    trajectory — and its final numbers — are the same with or without intermediate evaluations."""

    metrics: tuple[str, ...]
    every: int
    report: Callable[[int, dict[str, float]], None] | None = None

    def fit_budget(self, budget: Budget) -> Budget:
        """The budget handed to ``fit``: methods offer their state (``hooks.checkpoint``) every ``checkpoint_every``
        steps, so offers must come at every evaluation and every real checkpoint; the hooks tell them apart."""
        offer = math.gcd(budget.checkpoint_every, self.every) if budget.checkpoint_every else self.every
        return budget.model_copy(update={"checkpoint_every": offer})


@contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Run a block without consuming the random streams around it (torch CPU and CUDA, NumPy, ``random``)."""
    import numpy as np

    numpy_state, python_state = np.random.get_state(), random.getstate()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


class PerClassMethod(GenerativeMethod):
    """Fits one instance of an unconditional method per novel class, on that class's shots only.

    This adapter lives in the harness, not in methods/: unconditional methods stay unaware of labels, and the
    harness dispatches ``sample(labels)`` to the model of each class. Each class model gets the full budget.
    """

    name = "per_class"
    conditional = True

    def __init__(self, method_cls: type[GenerativeMethod], config, image_shape, num_classes, device) -> None:
        self.Config = method_cls.Config  # instance attribute: the wrapped method's config type
        super().__init__(config, image_shape, num_classes, device)
        self.method_cls = method_cls
        self.models: dict[int, GenerativeMethod] = {}
        self._pending_state: dict[int, dict[str, Any]] = {}
        self.done: list[int] = []

    def _model(self, label: int) -> GenerativeMethod:
        if label not in self.models:
            model = self.method_cls(self.config, self.image_shape, self.num_classes, self.device)
            if label in self._pending_state:
                model.load_state_dict(self._pending_state.pop(label))
            self.models[label] = model
        return self.models[label]

    def fit(self, task: FewShotTask, budget: Budget, hooks: FitHooks) -> None:
        empty = LabeledImages(task.novel.images[:0], task.novel.labels[:0])
        for label in task.novel_classes:
            if label in self.done:
                continue
            class_task = FewShotTask(
                base=empty, novel=task.novel.of_class(label), base_classes=(), novel_classes=(label,),
                image_shape=task.image_shape, seed=derive_seed(task.seed, "class", label),
            )
            seed_everything(derive_seed(task.seed, "fit-class", label))
            self._model(label).fit(class_task, budget, _ClassHooks(hooks, label))
            self.done.append(label)
            hooks.checkpoint(-1)

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out = torch.empty((len(labels), *self.image_shape), device=self.device)
        for label in torch.unique(labels).tolist():
            if label not in self.models:
                raise KeyError(f"no model was fitted for class {label}")
            mask = labels == label
            out[mask] = self.models[label].sample(labels[mask], generator).to(out.device)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "done": list(self.done),
            "classes": {label: m.state_dict() for label, m in self.models.items()} | self._pending_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = list(state["done"])
        self.models = {}
        self._pending_state = dict(state["classes"])
        for label in list(self._pending_state):
            self._model(label)


class _ClassHooks:
    def __init__(self, hooks: FitHooks, label: int) -> None:
        self.hooks, self.label = hooks, label

    def log(self, step: int, losses: dict[str, float], info: dict[str, Any] | None = None) -> None:
        self.hooks.log(step, losses, {**(info or {}), "class": self.label})

    def checkpoint(self, step: int) -> None:
        self.hooks.checkpoint(step)


class TrialHooks:
    """Records losses, stops a diverging trial, writes checkpoints through ``save_checkpoint`` and runs intermediate
    evaluations (``evaluate(steps done) -> values`` every ``evaluate_every`` steps before ``evaluate_before``,
    recorded, then passed to ``on_evaluation``).

    A checkpoint offer (``checkpoint(step)``) saves when ``checkpoint_every`` divides the steps done, or always when
    ``checkpoint_every`` is None (the method's own offers are the schedule) or ``step`` is negative (the per-class
    adapter's offer after each class).
    """

    def __init__(
        self,
        model: GenerativeMethod,
        save_checkpoint: Callable[[dict[str, Any]], None] | None = None,
        on_log: Callable[[int, dict[str, float], dict[str, Any] | None], None] | None = None,
        *,
        checkpoint_every: int | None = None,
        evaluate: Callable[[int], dict[str, float]] | None = None,
        evaluate_every: int = 0,
        evaluate_before: int | None = None,
        on_evaluation: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.model = model
        self.save_checkpoint = save_checkpoint
        self.on_log = on_log
        self.checkpoint_every = checkpoint_every
        self.evaluate = evaluate
        self.evaluate_every = evaluate_every
        self.evaluate_before = evaluate_before
        self.on_evaluation = on_evaluation
        self.records: list[dict[str, Any]] = []
        self.evaluations: list[dict[str, float]] = []
        self.evaluation_s = 0.0  # time spent in intermediate evaluations: not fitting

    def log(self, step: int, losses: dict[str, float], info: dict[str, Any] | None = None) -> None:
        losses = {k: float(v) for k, v in losses.items()}
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if bad:
            raise TrialDiverged(f"non-finite loss at step {step}: {bad}")
        self.records.append({"step": step, **(info or {}), **losses})
        if self.on_log is not None:
            self.on_log(step, losses, info)

    def checkpoint(self, step: int) -> None:
        done = step + 1
        if (self.evaluate is not None and step >= 0 and done % self.evaluate_every == 0
                and (self.evaluate_before is None or done < self.evaluate_before)):
            started = time.perf_counter()
            values = self.evaluate(done)
            self.evaluation_s += time.perf_counter() - started
            self.evaluations.append({"step": done, **values})
            if self.on_evaluation is not None:  # before saving: a scheduler that stops the trial here makes it moot
                self.on_evaluation(done, values)
        due = self.checkpoint_every is None or step < 0 or (self.checkpoint_every and done % self.checkpoint_every == 0)
        if self.save_checkpoint is not None and due:
            self.save_checkpoint({"model": self.model.state_dict(), "losses": self.records,
                                  "evaluations": self.evaluations})


def build_method(spec: TrialSpec, image_shape: tuple[int, int, int], num_classes: int, device: torch.device):
    method_cls = METHODS.get(spec.method)
    config = method_cls.Config(**spec.params)
    if method_cls.conditional:
        return method_cls(config, image_shape, num_classes, device)
    return PerClassMethod(method_cls, config, image_shape, num_classes, device)


@torch.no_grad()
def generate(model: GenerativeMethod, classes: tuple[int, ...], per_class: int, seed: int) -> LabeledImages:
    """``per_class`` samples of each class (class-major order), on the CPU, seeded from the trial."""
    labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(per_class)
    generator = torch.Generator(device=model.device).manual_seed(derive_seed(seed, "sample"))
    chunks = [
        model.sample(chunk.to(model.device), generator).float().clamp_(0, 1).cpu()
        for chunk in labels.split(SAMPLE_CHUNK)
    ]
    return LabeledImages(torch.cat(chunks), labels)


def save_grid(images: LabeledImages, classes: tuple[int, ...], per_class: int, path: Path) -> None:
    """One row per class, ``per_class`` images each."""
    rows = [images.of_class(c).images[:per_class] for c in classes]
    save_image(torch.cat(rows), path, nrow=per_class, padding=2, pad_value=1.0)


def run_trial(
    spec: TrialSpec,
    run_dir: str | Path,
    *,
    dataset: Dataset | None = None,
    device: str = "auto",
    num_threads: int | None = None,
    restore: dict[str, Any] | None = None,
    save_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    on_log: Callable[..., None] | None = None,
    tracking: TrackingContext | None = None,
    provenance: dict[str, Any] | None = None,
    intermediate: IntermediateEvaluation | None = None,
) -> TrialResult:
    """Fit, sample, evaluate and record one trial under ``run_dir/trials/<name>-<id>/``.

    ``restore`` is a checkpoint previously passed to ``save_checkpoint`` (resume). Without ``save_checkpoint`` a
    trial checkpoints to ``checkpoint.pt`` in its directory (when the budget asks for checkpoints) and resumes from it.
    A failure writes a ``failed`` result with the reason and re-raises, so the executor decides what happens next.
    ``provenance`` adds facts the executor knows (e.g. the Ray node). With ``tracking``, the trial logs into its MLflow
    child run (found again on resume); tracking problems are
    warnings, never a lost result. ``intermediate`` evaluates metrics during ``fit`` (see
    :class:`IntermediateEvaluation`); a :class:`TrialStopped` raised by its report ends the trial as ``stopped``.
    """
    started = time.perf_counter()
    started_at = time.time()
    trial_dir = trial_dir_for(Path(run_dir), spec)
    trial_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(num_threads or max(1, int(spec.resources.cpu)))
    torch_device = resolve_device(device, spec.resources.gpu)
    result = TrialResult(trial_id=spec.trial_id, name=spec.name, status="running", spec=spec.model_dump(mode="json"))
    result.provenance = {
        "git_commit": git_commit(),
        "versions": package_versions(),
        "method_target": METHODS.target(spec.method),
        **host_facts(torch_device),
        **(provenance or {}),
    }
    hooks: TrialHooks | None = None
    tracker = _SafeTracker(tracking, spec)
    try:
        dataset = dataset or load_dataset(spec.dataset)
        split = make_split(
            dataset, spec.base_classes, spec.novel_classes, spec.shots, spec.seed,
            eval_images_per_class=spec.eval_images_per_class, base_images_per_class=spec.base_images_per_class,
        )
        result.provenance.update(_data_provenance(dataset, split))

        model = build_method(spec, split.task.image_shape, dataset.info.num_classes, torch_device)
        result.provenance["method_config"] = model.config.model_dump(mode="json")
        tracker.call("set_config", result.provenance["method_config"], result.provenance)
        if save_checkpoint is None and spec.budget.checkpoint_every:
            save_checkpoint = _file_checkpointer(trial_dir / CHECKPOINT_FILE)
            if restore is None and (trial_dir / CHECKPOINT_FILE).exists():
                restore = torch.load(trial_dir / CHECKPOINT_FILE, map_location=torch_device, weights_only=False)
        fit_budget, evaluation_hooks = spec.budget, {}
        if intermediate is not None:
            fit_budget = intermediate.fit_budget(spec.budget)
            evaluation_hooks = {
                "checkpoint_every": spec.budget.checkpoint_every, "evaluate_every": intermediate.every,
                "evaluate_before": spec.budget.steps,
                "evaluate": _intermediate_evaluator(intermediate.metrics, spec, dataset, split, model, torch_device),
                "on_evaluation": _chain_evaluation(intermediate.report, tracker),
            }
        hooks = TrialHooks(model, save_checkpoint, _chain_log(on_log, tracker), **evaluation_hooks)
        if restore is not None:
            model.load_state_dict(restore["model"])
            hooks.records = list(restore.get("losses", []))
            hooks.evaluations = list(restore.get("evaluations", []))
            result.provenance["resumed"] = True

        seed_everything(derive_seed(spec.seed, "fit"))
        t0 = time.perf_counter()
        try:
            model.fit(split.task.to(torch_device), fit_budget, hooks)
        except TrialStopped as exc:
            result.status, result.error = "stopped", str(exc)
            return result  # the finally block records it
        finally:
            result.wall_times["fit_s"] = time.perf_counter() - t0 - hooks.evaluation_s
            if intermediate is not None:
                result.wall_times["intermediate_evaluate_s"] = hooks.evaluation_s

        t0 = time.perf_counter()
        samples = generate(model, spec.novel_classes, spec.evaluation.samples_per_class, spec.seed)
        result.wall_times["sample_s"] = time.perf_counter() - t0
        result.artifacts.update(_save_artifacts(spec, split, samples, trial_dir))
        if "samples" in result.artifacts:
            tracker.call("log_samples", trial_dir / result.artifacts["samples"], spec.budget.steps)

        if spec.evaluation.metrics:
            from harness.metrics import evaluate

            t0 = time.perf_counter()
            evaluation = evaluate(spec.evaluation, dataset, split, samples, device=torch_device)
            result.metrics = evaluation.metrics
            result.provenance.update(evaluation.provenance)
            result.wall_times["evaluate_s"] = time.perf_counter() - t0
        result.status = "ok"
    except BaseException as exc:
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {exc}"
        result.provenance["traceback"] = traceback.format_exc(limit=20)
        raise
    finally:
        if hooks is not None:
            result.losses = hooks.records
            result.final_losses = _final_losses(hooks.records)
            result.evaluations = hooks.evaluations
        result.wall_times["total_s"] = time.perf_counter() - started
        result.wall_times["started_at"] = started_at  # unix time: shows which trials ran concurrently
        result.wall_times["finished_at"] = time.time()
        result.write(trial_dir)
        tracker.call("finish", result, trial_dir)
    return result


def _intermediate_evaluator(metrics: tuple[str, ...], spec: TrialSpec, dataset: Dataset, split: FewShotSplit,
                            model: GenerativeMethod, device: torch.device) -> Callable[[int], dict[str, float]]:
    """The final evaluation's samples (same count, same noise) and metrics, restricted to ``metrics``; their pooled
    values only (no per-class breakdown, no real-data references: those do not change during training)."""
    from harness.metrics import evaluate, headline_values

    evaluation = spec.evaluation.model_copy(update={"metrics": list(metrics)})

    def evaluate_now(done: int) -> dict[str, float]:
        with isolated_rng(device):
            samples = generate(model, spec.novel_classes, spec.evaluation.samples_per_class, spec.seed)
            values = evaluate(evaluation, dataset, split, samples, device=device).metrics
        return headline_values(values)

    return evaluate_now


def _chain_evaluation(report, tracker: _SafeTracker) -> Callable[[int, dict[str, float]], None]:
    def on_evaluation(done: int, values: dict[str, float]) -> None:
        tracker.call("log_evaluation", done, values)
        if report is not None:
            report(done, values)

    return on_evaluation


class _SafeTracker:
    """Forwards to :class:`harness.tracking.TrialTracker`; a tracking failure is a warning, never a lost trial."""

    def __init__(self, context: TrackingContext | None, spec: TrialSpec) -> None:
        self.tracker = None
        if context is not None:
            try:
                from harness.tracking import TrialTracker

                self.tracker = TrialTracker(context, spec)
            except Exception as exc:  # noqa: BLE001
                warnings.warn(f"MLflow tracking unavailable: {exc}", RuntimeWarning, stacklevel=2)
            self.call("start")

    def call(self, method: str, *args: Any) -> None:
        if self.tracker is None:
            return
        try:
            getattr(self.tracker, method)(*args)
        except Exception as exc:  # noqa: BLE001 - the local result.json is the record that must survive
            warnings.warn(f"MLflow tracking failed in {method}: {exc}", RuntimeWarning, stacklevel=2)


def _chain_log(on_log, tracker: _SafeTracker):
    if tracker.tracker is None:
        return on_log

    def log(step: int, losses: dict[str, float], info: dict[str, Any] | None = None) -> None:
        tracker.call("log_losses", step, losses, info)
        if on_log is not None:
            on_log(step, losses, info)

    return log


def _data_provenance(dataset: Dataset, split: FewShotSplit) -> dict[str, Any]:
    return {
        "data_source": dataset.source,
        "dataset_fingerprint": dataset.fingerprint,
        "split_hash": split.split_hash,
        "shot_indices": {str(c): idx for c, idx in split.shot_indices.items()},
        "num_base_images": len(split.task.base),
        "num_heldout_images": len(split.heldout),
    }


def _save_artifacts(spec: TrialSpec, split: FewShotSplit, samples: LabeledImages, trial_dir: Path) -> dict[str, str]:
    artifacts = {}
    per_class = spec.evaluation.grid_samples_per_class
    if per_class:
        save_grid(samples, spec.novel_classes, per_class, trial_dir / "samples.png")
        save_grid(split.task.novel, spec.novel_classes, min(per_class, spec.shots), trial_dir / "shots.png")
        artifacts.update(samples="samples.png", shots="shots.png")
    # uint8 keeps every sample for re-evaluation at a quarter of the float size
    torch.save({"images": (samples.images * 255).round().to(torch.uint8), "labels": samples.labels},
               trial_dir / "samples.pt")
    artifacts["samples_tensor"] = "samples.pt"
    return artifacts


def _final_losses(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean over the last logged record of each fitted model (one per class for unconditional methods)."""
    last: dict[Any, dict[str, Any]] = {}
    for record in records:
        last[record.get("class")] = record
    keys = {k for r in last.values() for k, v in r.items() if k not in ("step", "class") and isinstance(v, float)}
    return {k: sum(r[k] for r in last.values() if k in r) / len(last) for k in sorted(keys)}


def _file_checkpointer(path: Path) -> Callable[[dict[str, Any]], None]:
    def save(state: dict[str, Any]) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    return save
