"""``run_trial``: the one function every executor calls (fit → sample → evaluate → record).

It is pure given its spec: it seeds everything from the spec, reads only the dataset it is handed (or loads the one
the spec names) and writes only under its own trial directory. Executors differ in *where* trials run, never in
*what* a trial computes: what they add (tracking, Tune reports, checkpoint storage, progress) are
:class:`~harness.callbacks.TrialCallback` objects, and the trial's loop (:class:`TrialLoop`) decides when each
is called.
"""

from __future__ import annotations

import logging
import math
import random
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image

from harness.api import (
    Budget, FewShotTask, FitHooks, GenerativeMethod, LabeledImages, Losses, TrialDiverged, loss_values,
)
from harness.callbacks import TrialCallback, TrialInfo, TrialStopped, call_all, wants
from harness.data import Dataset, FewShotSplit, load_dataset, make_split
from harness.files import DamagedFile, load_tensors, save_samples, save_tensors, set_aside
from harness.registry import METHODS
from harness.results import CHECKPOINT_FILE, RESULT_FILE, TrialResult, trial_dir_for
from harness.runtime import derive_seed, git_commit, host_facts, package_versions, resolve_device, seed_everything
from harness.suite import TrialSpec

__all__ = [
    "CHECKPOINT_FILE", "RESULT_FILE", "SAMPLES_FILE", "FileCheckpoint", "IntermediateEvaluation", "TrialLoop",
    "TrialResult", "TrialStopped", "run_trial", "split_for", "trial_dir_for",
]

SAMPLES_FILE = "samples.pt"
log = logging.getLogger(__name__)
SAMPLE_CHUNK = 500


class IntermediateEvaluation(TrialCallback):
    """Evaluate ``metrics`` on the model being fitted after every ``every`` steps before the last (the final
    evaluation covers that one): what a sweep's early stopping compares trials on. The values reach every callback's
    ``on_evaluation`` (tracking, the scheduler's report, which may stop the trial).

    The evaluation samples in the generator's eval mode and under saved random states, so a trial's training
    trajectory — and its final numbers — are the same with or without intermediate evaluations."""

    def __init__(self, metrics: Sequence[str], every: int) -> None:
        if every < 1:
            raise ValueError(f"evaluation interval must be at least 1 step, got {every}")
        self.metrics, self.every = tuple(metrics), every

    def on_step_end(self, trial: TrialInfo, step: int) -> None:
        done = step + 1
        if done % self.every == 0 and done < trial.steps and trial.evaluate is not None:
            trial.evaluate(self.metrics)


class FileCheckpoint(TrialCallback):
    """Keeps the trial's latest resumable state in ``<trial dir>/checkpoint.pt`` (atomic replace): what the
    in-process executor resumes from. ``load`` returns it, or None."""

    def __init__(self, trial_dir: Path) -> None:
        self.path = Path(trial_dir) / CHECKPOINT_FILE

    def load(self) -> dict[str, Any] | None:
        """The saved state (tensors on the CPU, loaded without unpickling code), or None: none saved, or a damaged
        one — derived data, so it is set aside with a warning naming it and the trial starts from step 0."""
        return load_checkpoint(self.path)

    def on_checkpoint(self, trial: TrialInfo, state: dict[str, Any]) -> None:
        save_tensors(self.path, state)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """A trial state saved by :func:`~harness.files.save_tensors` at ``path``, or None (missing, or damaged: set
    aside with a warning, the trial restarts)."""
    if not Path(path).exists():
        return None
    try:
        state = load_tensors(path)
        if not isinstance(state, dict) or "model" not in state:
            raise DamagedFile(path, "is not a trial state (no 'model' entry)")
    except DamagedFile as exc:
        kept = set_aside(path, "damaged")
        log.warning("%s; the trial starts again from step 0 (the file is kept as %s)", exc, kept.name)
        return None
    return state


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
                dataset_name=task.dataset_name,
            )
            seed_everything(derive_seed(task.seed, "fit-class", label))
            self._model(label).fit(class_task, budget, _ClassHooks(hooks, label))
            self.done.append(label)
            model_done = getattr(hooks, "model_done", None)  # the trial loop checkpoints after each class
            if model_done is not None:
                model_done()

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
    """What one per-class model sees: the trial's hooks, with its class named in every record's ``info``."""

    def __init__(self, hooks: FitHooks, label: int) -> None:
        self.hooks, self.label = hooks, label

    def step_end(self, step: int, losses: Losses, info: dict[str, Any] | None = None) -> None:
        self.hooks.step_end(step, losses, {**(info or {}), "class": self.label})


class TrialLoop:
    """The method's :class:`~harness.api.FitHooks` in a trial, and the one place that decides, per generator step:

    * **log**: every ``budget.log_every`` steps and the last step of each fitted model — losses read as floats (one
      host synchronisation), recorded, passed to ``on_log``;
    * **divergence**: a non-finite logged loss raises :class:`~harness.api.TrialDiverged`;
    * ``on_step_end`` for every callback (an :class:`IntermediateEvaluation` evaluates here);
    * **checkpoint**: every ``budget.checkpoint_every`` steps, and after each per-class model (``model_done``), the
      state ``{"model", "losses", "evaluations"}`` goes to ``on_checkpoint`` — built only if a callback keeps it.
    """

    def __init__(self, model: GenerativeMethod, budget: Budget, trial: TrialInfo,
                 callbacks: Sequence[TrialCallback], evaluator: Callable[[tuple[str, ...]], dict[str, float]]
                 ) -> None:
        self.model, self.budget, self.trial, self.callbacks = model, budget, trial, tuple(callbacks)
        self._evaluator = evaluator
        self._checkpoints = wants(self.callbacks, "on_checkpoint")
        self.records: list[dict[str, Any]] = []
        self.evaluations: list[dict[str, float]] = []
        self.evaluation_s = 0.0  # time spent in intermediate evaluations: not fitting
        self.steps_done = 0
        trial.evaluate = self.evaluate

    def step_end(self, step: int, losses: Losses, info: dict[str, Any] | None = None) -> None:
        budget = self.budget
        self.steps_done = step + 1
        if step % budget.log_every == 0 or step == budget.steps - 1:
            values = loss_values(losses)
            bad = {k: v for k, v in values.items() if not math.isfinite(v)}
            if bad:
                raise TrialDiverged(f"{self.trial.spec.method}: non-finite loss at step {step}: {bad}")
            info = dict(info or {})
            self.records.append({"step": step, **info, **values})
            call_all(self.callbacks, "on_log", self.trial, step, values, info)
        call_all(self.callbacks, "on_step_end", self.trial, step)
        if budget.checkpoint_every and self.steps_done % budget.checkpoint_every == 0:
            self.checkpoint()

    def model_done(self) -> None:
        """One per-class model finished its budget: checkpoint, so a resumed trial skips it."""
        self.checkpoint()

    def checkpoint(self) -> None:
        if self._checkpoints:
            call_all(self.callbacks, "on_checkpoint", self.trial, self.state())

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "losses": self.records, "evaluations": self.evaluations}

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.records = list(state.get("losses", []))
        self.evaluations = list(state.get("evaluations", []))

    def evaluate(self, metrics: tuple[str, ...]) -> dict[str, float]:
        """Intermediate values of ``metrics`` now, recorded and passed to every callback's ``on_evaluation``."""
        started = time.perf_counter()
        values = self._evaluator(metrics)
        self.evaluation_s += time.perf_counter() - started
        self.evaluations.append({"step": self.steps_done, **values})
        call_all(self.callbacks, "on_evaluation", self.trial, self.steps_done, values)
        return values


def build_method(spec: TrialSpec, image_shape: tuple[int, int, int], num_classes: int, device: torch.device):
    method_cls = METHODS.get(spec.method)
    config = method_cls.Config(**spec.params)
    if method_cls.conditional:
        return method_cls(config, image_shape, num_classes, device)
    return PerClassMethod(method_cls, config, image_shape, num_classes, device)


def resolved_budget(model: GenerativeMethod, task: FewShotTask, budget: Budget) -> Budget:
    """``budget`` with ``steps`` the count ``model`` runs on ``task`` (an epoch budget resolved; ``epochs`` kept, so
    the method resolves it to the same count)."""
    return budget.model_copy(update={"steps": model.steps_for(task, budget)})


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
    restore: dict[str, Any] | None = None,
    callbacks: Sequence[TrialCallback] = (),
    provenance: dict[str, Any] | None = None,
) -> TrialResult:
    """Fit, sample, evaluate and record one trial under ``run_dir/trials/<name>-<id>/``.

    ``restore`` is a state a callback received in ``on_checkpoint`` (resume). ``callbacks`` are called in order (see
    :mod:`harness.callbacks`); ``provenance`` adds facts the executor knows (e.g. the Ray node). Torch uses as many
    threads as the trial was given CPUs. A failure writes a ``failed`` result with the reason and re-raises, so the
    executor decides what happens next; a :class:`TrialStopped` from a callback ends the trial as ``stopped``.
    """
    started = time.perf_counter()
    started_at = time.time()
    trial_dir = trial_dir_for(Path(run_dir), spec)
    trial_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    torch_device = resolve_device(device, spec.resources.gpu)
    result = TrialResult(trial_id=spec.trial_id, name=spec.name, status="running", spec=spec.model_dump(mode="json"))
    result.provenance = {
        "git_commit": git_commit(),
        "versions": package_versions(),
        "method_target": METHODS.target(spec.method),
        **host_facts(torch_device),
        **(provenance or {}),
    }
    trial = TrialInfo(spec, trial_dir, result.provenance)
    loop: TrialLoop | None = None
    try:
        dataset = dataset or load_dataset(spec.dataset)
        split = split_for(spec, dataset)
        result.provenance.update(_data_provenance(dataset, split))
        result.provenance["selection"] = spec.selection  # "test": chosen on test images, flagged wherever shown
        result.provenance["heldout_from"] = spec.heldout_from
        result.provenance["data"] = spec.data  # "full": an oracle reference, reported apart from the few-shot methods

        model = build_method(spec, split.task.image_shape, dataset.info.num_classes, torch_device)
        result.provenance["method_config"] = model.config.model_dump(mode="json")
        trial.budget = resolved_budget(model, split.task, spec.budget)
        result.provenance["budget_steps"] = trial.budget.steps  # what an epoch budget came to for this task
        loop = TrialLoop(model, trial.budget, trial, callbacks,
                         _intermediate_evaluator(spec, dataset, split, model, torch_device))
        if restore is not None:
            loop.restore(restore)
            result.provenance["resumed"] = True
        call_all(callbacks, "on_start", trial)

        seed_everything(derive_seed(spec.seed, "fit"))
        t0 = time.perf_counter()
        try:
            model.fit(split.task.to(torch_device), trial.budget, loop)
        except TrialStopped as exc:
            result.status, result.error = "stopped", str(exc)
            return result  # the finally block records it
        finally:
            result.wall_times["fit_s"] = time.perf_counter() - t0 - loop.evaluation_s
            if loop.evaluations or loop.evaluation_s:
                result.wall_times["intermediate_evaluate_s"] = loop.evaluation_s

        t0 = time.perf_counter()
        samples = generate(model, spec.novel_classes, spec.evaluation.samples_per_class, spec.seed)
        result.wall_times["sample_s"] = time.perf_counter() - t0
        result.artifacts.update(_save_artifacts(spec, split, samples, trial_dir))

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
        if loop is not None:
            result.losses = loop.records
            result.final_losses = _final_losses(loop.records)
            result.evaluations = loop.evaluations
        result.wall_times["total_s"] = time.perf_counter() - started
        result.wall_times["started_at"] = started_at  # unix time: shows which trials ran concurrently
        result.wall_times["finished_at"] = time.time()
        result.write(trial_dir)
        call_all(callbacks, "on_finish", trial, result)
    return result


def split_for(spec: TrialSpec, dataset: Dataset) -> FewShotSplit:
    """The few-shot split ``spec`` trains and is evaluated on (a pure function of the spec and the dataset)."""
    return make_split(
        dataset, spec.base_classes, spec.novel_classes, spec.shots, spec.seed,
        eval_images_per_class=spec.eval_images_per_class, base_images_per_class=spec.base_images_per_class,
        heldout_from=spec.heldout_from, data=spec.data,
    )


def _intermediate_evaluator(spec: TrialSpec, dataset: Dataset, split: FewShotSplit, model: GenerativeMethod,
                            device: torch.device) -> Callable[[tuple[str, ...]], dict[str, float]]:
    """The final evaluation's samples (same count, same noise) and the named metrics; their pooled values only (no
    per-class breakdown, no real-data references: those do not change during training)."""

    def evaluate_now(metrics: tuple[str, ...]) -> dict[str, float]:
        from harness.metrics import evaluate, headline_values

        evaluation = spec.evaluation.model_copy(update={"metrics": list(metrics)})
        with isolated_rng(device):
            samples = generate(model, spec.novel_classes, spec.evaluation.samples_per_class, spec.seed)
            values = evaluate(evaluation, dataset, split, samples, device=device).metrics
        return headline_values(values)

    return evaluate_now


def _data_provenance(dataset: Dataset, split: FewShotSplit) -> dict[str, Any]:
    return {
        "data_source": dataset.source,
        "dataset_fingerprint": dataset.fingerprint,
        "split_hash": split.split_hash,
        "shot_indices": {str(c): idx for c, idx in split.shot_indices.items()},
        "num_base_images": len(split.task.base),
        "num_novel_images": len(split.task.novel),
        "num_heldout_images": len(split.heldout),
    }


def _save_artifacts(spec: TrialSpec, split: FewShotSplit, samples: LabeledImages, trial_dir: Path) -> dict[str, str]:
    artifacts = {}
    per_class = spec.evaluation.grid_samples_per_class
    if per_class:
        save_grid(samples, spec.novel_classes, per_class, trial_dir / "samples.png")
        save_grid(split.task.novel, spec.novel_classes, min(per_class, spec.shots), trial_dir / "shots.png")
        artifacts.update(samples="samples.png", shots="shots.png")
    save_samples(trial_dir / SAMPLES_FILE, samples.images, samples.labels)  # every sample, for re-evaluation
    artifacts["samples_tensor"] = SAMPLES_FILE
    return artifacts


def _final_losses(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean over the last logged record of each fitted model (one per class for unconditional methods)."""
    last: dict[Any, dict[str, Any]] = {}
    for record in records:
        last[record.get("class")] = record
    keys = {k for r in last.values() for k, v in r.items() if k not in ("step", "class") and isinstance(v, float)}
    return {k: sum(r[k] for r in last.values() if k in r) / len(last) for k in sorted(keys)}
