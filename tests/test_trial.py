"""run_trial: reproducible, records provenance, per-class fitting, divergence, resume from checkpoints; the trial
loop decides when callbacks are called (logging, checkpoints, evaluations) and calls them in order."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import torch

from harness.api import GenerativeMethod
from harness.callbacks import TrialCallback, TrialStopped
from harness.data import load_dataset
from harness.executors import run_inprocess
from harness.registry import METHODS
from harness.suite import expand, load_suite
from harness.trial import FileCheckpoint, IntermediateEvaluation, TrialResult, run_trial, trial_dir_for

SMOKE = Path(__file__).resolve().parents[1] / "suites" / "smoke.yaml"


@pytest.fixture(scope="module")
def smoke():
    suite = load_suite(SMOKE)
    return suite, load_dataset(suite.dataset)


def _spec(suite, method: str, **budget):
    spec = next(s for s in expand(suite) if s.method == method)
    return spec.model_copy(update={"budget": spec.budget.model_copy(update={"steps": 4, **budget})})


def test_same_spec_gives_identical_losses_and_samples(tmp_path, smoke):
    suite, dataset = smoke
    spec = _spec(suite, "cgan")
    first = run_trial(spec, tmp_path / "a", dataset=dataset, device="cpu")
    second = run_trial(spec, tmp_path / "b", dataset=dataset, device="cpu")
    assert first.status == second.status == "ok"
    assert first.losses == second.losses and first.losses
    a = torch.load(trial_dir_for(tmp_path / "a", spec) / "samples.pt")
    b = torch.load(trial_dir_for(tmp_path / "b", spec) / "samples.pt")
    assert torch.equal(a["images"], b["images"])
    assert a["images"].shape == (2 * spec.evaluation.samples_per_class, 1, 28, 28)
    assert a["labels"].tolist() == [3] * 64 + [4] * 64


def test_result_records_provenance_and_artifacts(tmp_path, smoke):
    suite, dataset = smoke
    spec = _spec(suite, "dcgan")
    result = run_trial(spec, tmp_path, dataset=dataset, device="cpu")
    stored = TrialResult.load(trial_dir_for(tmp_path, spec) / "result.json")
    assert stored.trial_id == spec.trial_id == result.trial_id
    prov = stored.provenance
    assert prov["data_source"].startswith("embedded")
    assert len(prov["split_hash"]) == 64 and prov["git_commit"]
    assert {"torch", "python", "fewshot-harness"} <= set(prov["versions"])
    assert prov["method_config"]["width"] == 16
    assert sorted(prov["shot_indices"]) == ["3", "4"] and all(len(v) == 5 for v in prov["shot_indices"].values())
    assert {"fit_s", "sample_s", "total_s"} <= set(stored.wall_times)
    for name in stored.artifacts.values():
        assert (trial_dir_for(tmp_path, spec) / name).stat().st_size > 0
    # unconditional: one model per novel class, each logged under its class
    assert {r["class"] for r in stored.losses} == {3, 4}
    assert set(stored.final_losses) >= {"loss_d", "loss_g"}


class _NaNConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    diverge_at: int = 2


class _DivergingMethod(GenerativeMethod):
    """A conditional 'method' whose loss becomes NaN: the harness must stop it and say why."""

    name = "diverging"
    Config = _NaNConfig
    conditional = True
    description = "test double"

    def fit(self, task, budget, hooks):
        for step in range(budget.steps):
            hooks.step_end(step, {"loss_g": torch.tensor(float("nan") if step >= self.config.diverge_at else 1.0)})

    def sample(self, labels, generator):
        return torch.zeros(len(labels), *self.image_shape)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.fixture
def diverging_registered():
    METHODS.register("diverging", _DivergingMethod, overwrite=True)
    yield
    METHODS._targets.pop("diverging", None)
    METHODS._loaded.pop("diverging", None)


def test_diverging_trial_fails_with_reason_and_the_suite_goes_on(tmp_path, smoke, diverging_registered):
    suite, _ = smoke
    good = _spec(suite, "cgan", log_every=1)  # the loop checks the losses it logs: here every step
    bad = good.model_copy(update={"method": "diverging", "label": "diverging", "params": {}})
    results = run_inprocess([bad, good], tmp_path, device="cpu")
    assert [r.status for r in results] == ["failed", "ok"]
    assert "non-finite loss at step 2" in results[0].error
    assert TrialResult.load(trial_dir_for(tmp_path, bad) / "result.json").status == "failed"


class _Interrupt(Exception):
    pass


class _Recorder(TrialCallback):
    """Remembers every hook call in order; optionally raises ``error`` from ``on_<hook>`` at ``step``."""

    def __init__(self, raise_in: str | None = None, at_step: int | None = None, error: Exception | None = None):
        self.calls: list[tuple] = []
        self.raise_in, self.at_step, self.error = raise_in, at_step, error

    def _maybe_raise(self, hook: str, step: int) -> None:
        if hook == self.raise_in and step == self.at_step:
            raise self.error

    def on_start(self, trial):
        self.calls.append(("start",))

    def on_log(self, trial, step, losses, info):
        self.calls.append(("log", info.get("class"), step))
        self._maybe_raise("log", step)

    def on_evaluation(self, trial, steps_done, values):
        self.calls.append(("evaluation", steps_done, tuple(values)))
        self._maybe_raise("evaluation", steps_done)

    def on_checkpoint(self, trial, state):
        self.calls.append(("checkpoint", state["losses"][-1]["step"], state["losses"][-1].get("class")))

    def on_finish(self, trial, result):
        self.calls.append(("finish", result.status))


def test_the_loop_logs_every_log_every_steps_and_the_last_and_checkpoints_on_its_schedule(tmp_path, smoke):
    suite, dataset = smoke
    spec = _spec(suite, "cgan", steps=7, log_every=3, checkpoint_every=2)
    recorder = _Recorder()
    result = run_trial(spec, tmp_path, dataset=dataset, device="cpu", callbacks=[recorder])
    assert [r["step"] for r in result.losses] == [0, 3, 6]  # every 3rd step and the last
    assert recorder.calls[0] == ("start",) and recorder.calls[-1] == ("finish", "ok")
    # checkpoints after steps 1, 3, 5 (every 2 steps done); each state holds the losses logged so far
    assert [c for c in recorder.calls if c[0] == "checkpoint"] == [("checkpoint", 0, None), ("checkpoint", 3, None),
                                                                   ("checkpoint", 3, None)]
    assert [c for c in recorder.calls if c[0] == "log"] == [("log", None, 0), ("log", None, 3), ("log", None, 6)]


def test_an_epoch_budget_is_resolved_for_the_task_before_the_fit(tmp_path, smoke):
    """GLICO counts epochs: 2 epochs of its 10 codes (5 shots × 2 classes) in batches of 4 are 2 × 3 steps, and the
    loop logs the last of them and checkpoints by that count."""
    suite, dataset = smoke
    tiny = {"code_dim": 16, "noise_dim": 8, "hidden": 32, "width": 4, "classifier_width": 4, "perceptual": "pixel"}
    spec = _spec(suite, "cgan").model_copy(update={
        "method": "glico", "label": "glico", "params": tiny,
        "budget": suite.budget.model_copy(update={"steps": 50, "epochs": 2, "batch_size": 4, "log_every": 4,
                                                  "checkpoint_every": 3}),
        "evaluation": suite.evaluation.model_copy(update={"metrics": [], "samples_per_class": 4})})
    recorder = _Recorder()
    result = run_trial(spec, tmp_path, dataset=dataset, device="cpu", callbacks=[recorder])
    assert result.status == "ok" and result.provenance["budget_steps"] == 2 * 3
    assert [r["step"] for r in result.losses] == [0, 4, 5]  # every 4th and the last of the 6 steps, not of 50
    assert [c for c in recorder.calls if c[0] == "checkpoint"] == [("checkpoint", 0, None), ("checkpoint", 5, None)]


def test_per_class_models_checkpoint_after_each_class(tmp_path, smoke):
    """The unconditional baselines fit one model per novel class: a checkpoint follows each, so a resumed trial
    skips the classes already done (no sentinel step: the adapter tells the loop a model is done)."""
    suite, dataset = smoke
    spec = _spec(suite, "dcgan", steps=3, log_every=1)  # no periodic checkpoints
    recorder = _Recorder()
    run_trial(spec, tmp_path, dataset=dataset, device="cpu", callbacks=[recorder])
    assert [c for c in recorder.calls if c[0] == "checkpoint"] == [("checkpoint", 2, 3), ("checkpoint", 2, 4)]


def test_no_checkpoint_state_is_built_when_no_callback_keeps_it(tmp_path, smoke, monkeypatch):
    from harness.trial import TrialLoop

    suite, dataset = smoke
    built = []
    monkeypatch.setattr(TrialLoop, "state", lambda self: built.append(1) or {})
    run_trial(_spec(suite, "cgan", steps=4, checkpoint_every=1), tmp_path, dataset=dataset, device="cpu",
              callbacks=[TrialCallback()])
    assert built == []


def test_a_callback_failure_fails_the_trial_and_on_finish_still_sees_it(tmp_path, smoke):
    suite, dataset = smoke
    spec = _spec(suite, "cgan", steps=4, log_every=1)
    recorder = _Recorder("log", 2, _Interrupt("boom"))
    with pytest.raises(_Interrupt):
        run_trial(spec, tmp_path, dataset=dataset, device="cpu", callbacks=[recorder])
    assert recorder.calls[-1] == ("finish", "failed")
    assert TrialResult.load(trial_dir_for(tmp_path, spec) / "result.json").error == "_Interrupt: boom"


def test_interrupted_trial_resumes_from_its_checkpoint_without_redoing_steps(tmp_path, smoke):
    suite, dataset = smoke
    spec = _spec(suite, "dcgan", steps=6, log_every=1, checkpoint_every=2)
    checkpoint = FileCheckpoint(trial_dir_for(tmp_path, spec))
    interrupt = _Recorder("log", 2, _Interrupt())
    interrupt.on_log = lambda trial, step, losses, info: (  # second class, third step
        _Recorder.on_log(interrupt, trial, step, losses, info) if info["class"] == 4 else None)

    with pytest.raises(_Interrupt):
        run_trial(spec, tmp_path, dataset=dataset, device="cpu", callbacks=[checkpoint, interrupt])
    assert TrialResult.load(trial_dir_for(tmp_path, spec) / "result.json").status == "failed"
    assert checkpoint.load() is not None

    resumed = run_trial(spec, tmp_path, dataset=dataset, device="cpu", restore=checkpoint.load(),
                        callbacks=[checkpoint])
    assert resumed.status == "ok" and resumed.provenance.get("resumed") is True
    steps = [(r["class"], r["step"]) for r in resumed.losses]
    assert sorted(steps) == [(c, s) for c in (3, 4) for s in range(6)]  # every step once, none redone
    uninterrupted = run_trial(spec, tmp_path / "straight", dataset=dataset, device="cpu")
    assert resumed.metrics == uninterrupted.metrics and resumed.losses == uninterrupted.losses


def _fid_only(spec):
    return spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"metrics": ["fid"]})})


def test_intermediate_evaluations_leave_the_training_unchanged(tmp_path, smoke):
    """Evaluating mid-fit samples from the model and computes FID: neither may move the training's random streams,
    so a sweep trial with ASHA trains exactly as the same trial without it."""
    suite, dataset = smoke
    spec = _fid_only(_spec(suite, "cgan", steps=8, log_every=1, checkpoint_every=4))
    recorder = _Recorder()
    plain = run_trial(spec, tmp_path / "plain", dataset=dataset, device="cpu")
    evaluated = run_trial(spec, tmp_path / "evaluated", dataset=dataset, device="cpu",
                          callbacks=[IntermediateEvaluation(("fid",), 2), recorder])
    assert evaluated.status == plain.status == "ok"
    assert evaluated.losses == plain.losses
    assert evaluated.metrics["fid"].value == plain.metrics["fid"].value
    # none after the last step: the final evaluation is that one
    reports = [c[1] for c in recorder.calls if c[0] == "evaluation"]
    assert [e["step"] for e in evaluated.evaluations] == [2, 4, 6] == reports
    assert all(set(e) == {"step", "fid"} for e in evaluated.evaluations)  # pooled, no per-class or real floor
    assert evaluated.wall_times["intermediate_evaluate_s"] > 0 and "intermediate_evaluate_s" not in plain.wall_times
    # checkpoints still every 4 steps (after steps 0-3 and 4-7), not at every evaluation; at step 4 after it
    events = [c[0] for c in recorder.calls if c[0] in ("evaluation", "checkpoint")]
    assert events == ["evaluation", "evaluation", "checkpoint", "evaluation", "checkpoint"]
    assert len({e["fid"] for e in evaluated.evaluations} | {plain.metrics["fid"].value}) == 4
    assert TrialResult.load(trial_dir_for(tmp_path / "evaluated", spec) / "result.json").evaluations == \
        evaluated.evaluations


def test_a_trial_stopped_by_its_scheduler_is_recorded_as_stopped(tmp_path, smoke):
    suite, dataset = smoke
    spec = _fid_only(_spec(suite, "cgan", steps=8))
    stopper = _Recorder("evaluation", 4, TrialStopped("stopped by the test's scheduler after step 4"))
    result = run_trial(spec, tmp_path, dataset=dataset, device="cpu",
                       callbacks=[IntermediateEvaluation(("fid",), 2), stopper])
    stored = TrialResult.load(trial_dir_for(tmp_path, spec) / "result.json")
    assert result.status == stored.status == "stopped" and "after step 4" in stored.error
    assert [e["step"] for e in stored.evaluations] == [2, 4] and stored.metrics == {}
    assert max(r["step"] for r in stored.losses) < 4 and "fit_s" in stored.wall_times
    assert not (trial_dir_for(tmp_path, spec) / "samples.pt").exists()
    assert stopper.calls[-1] == ("finish", "stopped")


def test_isolated_rng_leaves_every_random_stream_where_it_was():
    import random

    import numpy as np

    from harness.trial import isolated_rng

    def draw():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]

    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = draw()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    with isolated_rng(torch.device("cpu")):
        inside = draw()
        draw()
    assert inside == expected and draw() == expected


def test_a_selection_trial_is_scored_only_on_validation_images(tmp_path, smoke, monkeypatch):
    """What the scorer receives during a sweep: the validation class's own held-out training images — never a test
    image, never a novel class — and the method never sees a novel class either."""
    import harness.metrics as metrics
    from harness.suite import parse_suite, selection_spec

    suite, dataset = smoke
    data = suite.model_dump(mode="json", by_alias=True)
    data["protocol"]["validation_classes"] = [2]
    data["sweep"] = {"method": "cgan", "metric": "fid", "mode": "min", "space": {"lr_g": {"uniform": [1e-4, 1e-3]}}}
    data["evaluation"]["metrics"] = ["fid"]
    with_validation = parse_suite(data, "x.yaml")
    spec = selection_spec(with_validation, with_validation.method_entry("cgan"), 5, 0)
    spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"steps": 2})})
    seen = []
    real_evaluate = metrics.evaluate

    def spy(config, ds, split, samples, device="cpu", **kwargs):
        seen.append((split, samples.labels.unique().tolist()))
        return real_evaluate(config, ds, split, samples, device, **kwargs)

    monkeypatch.setattr(metrics, "evaluate", spy)
    result = run_trial(spec, tmp_path, dataset=dataset, device="cpu")
    assert result.status == "ok" and len(seen) == 1
    split, sampled = seen[0]
    test_rows = {bytes(x.numpy().tobytes()) for x in dataset.test.images}
    train_rows = {bytes(x.numpy().tobytes()) for x in dataset.train.images}
    held = {bytes(x.numpy().tobytes()) for x in split.heldout.images}
    assert sampled == [2] and set(split.heldout.labels.tolist()) == {2}
    assert held <= train_rows and not held & test_rows
    task_classes = set(split.task.base.labels.tolist()) | set(split.task.novel.labels.tolist())
    assert task_classes == {0, 1, 2}  # the novel digits 3 and 4 are absent altogether
    assert result.provenance["selection"] == "validation" and result.provenance["heldout_from"] == "train"


def test_a_full_data_trial_sees_every_training_image_of_the_novel_classes_and_is_recorded_as_a_reference(
        tmp_path, smoke):
    from harness.tracking import spec_params
    from harness.tracking.runs import REFERENCE_TAG, reference_tags

    suite, dataset = smoke
    few = _spec(suite, "cgan", steps=1)
    spec = few.model_copy(update={"method": "copy_shots", "label": "copy_shots-full", "params": {}, "data": "full",
                                  "evaluation": few.evaluation.model_copy(update={"metrics": []})})
    result = run_trial(spec, tmp_path, dataset=dataset, device="cpu")
    stored = TrialResult.load(trial_dir_for(tmp_path, spec) / "result.json")
    assert result.status == stored.status == "ok"
    assert stored.spec["data"] == stored.provenance["data"] == "full"
    train_labels = dataset.train.labels
    for c in spec.novel_classes:
        assert stored.provenance["shot_indices"][str(c)] == torch.nonzero(train_labels == c).flatten().tolist()
    assert stored.provenance["num_novel_images"] == int(sum((train_labels == c).sum() for c in spec.novel_classes))
    # copy_shots replays what it was given: its samples reach beyond the 5 shots a few-shot trial would hold
    samples = torch.load(trial_dir_for(tmp_path, spec) / "samples.pt")["images"]
    distinct = {bytes(x.numpy().tobytes()) for x in samples}
    train = {bytes((x * 255).round().to(torch.uint8).numpy().tobytes()) for x in dataset.train.images}
    assert distinct <= train and len(distinct) > 2 * spec.shots
    assert spec_params(spec)["data"] == "full" and spec_params(few)["data"] == "few"
    assert REFERENCE_TAG in reference_tags(spec) and reference_tags(few) == {}
