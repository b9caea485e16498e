"""run_trial: reproducible, records provenance, per-class fitting, divergence, resume from checkpoints."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import torch

from harness.api import GenerativeMethod
from harness.data import load_dataset
from harness.executors import run_inprocess
from harness.registry import METHODS
from harness.suite import expand, load_suite
from harness.trial import TrialResult, run_trial, trial_dir_for

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
            hooks.log(step, {"loss_g": float("nan") if step >= self.config.diverge_at else 1.0})

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
    good = _spec(suite, "cgan")
    bad = good.model_copy(update={"method": "diverging", "label": "diverging", "params": {}})
    results = run_inprocess([bad, good], tmp_path, device="cpu", progress=False)
    assert [r.status for r in results] == ["failed", "ok"]
    assert "non-finite loss at step 2" in results[0].error
    assert TrialResult.load(trial_dir_for(tmp_path, bad) / "result.json").status == "failed"


class _Interrupt(Exception):
    pass


def test_interrupted_trial_resumes_from_its_checkpoint_without_redoing_steps(tmp_path, smoke):
    suite, dataset = smoke
    spec = _spec(suite, "dcgan", steps=6, log_every=1, checkpoint_every=2)
    seen = []

    def interrupt(step, losses, info=None):
        seen.append(step)
        if len(seen) == 9:  # second class, third step
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_trial(spec, tmp_path, dataset=dataset, device="cpu", on_log=interrupt)
    assert TrialResult.load(trial_dir_for(tmp_path, spec) / "result.json").status == "failed"
    assert (trial_dir_for(tmp_path, spec) / "checkpoint.pt").exists()

    resumed = run_trial(spec, tmp_path, dataset=dataset, device="cpu")
    assert resumed.status == "ok" and resumed.provenance.get("resumed") is True
    steps = [(r["class"], r["step"]) for r in resumed.losses]
    assert sorted(steps) == [(c, s) for c in (3, 4) for s in range(6)]  # every step once, none redone


def _fid_only(spec):
    return spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"metrics": ["fid"]})})


def test_intermediate_evaluations_leave_the_training_unchanged(tmp_path, smoke):
    """Evaluating mid-fit samples from the model and computes FID: neither may move the training's random streams,
    so a sweep trial with ASHA trains exactly as the same trial without it."""
    from harness.trial import IntermediateEvaluation

    suite, dataset = smoke
    spec = _fid_only(_spec(suite, "cgan", steps=8, log_every=1, checkpoint_every=4))
    reports, saved = [], []
    plain = run_trial(spec, tmp_path / "plain", dataset=dataset, device="cpu")
    evaluated = run_trial(spec, tmp_path / "evaluated", dataset=dataset, device="cpu",
                          save_checkpoint=lambda state: saved.append(state["losses"][-1]["step"]),
                          intermediate=IntermediateEvaluation(("fid",), 2, lambda step, v: reports.append((step, v))))
    assert evaluated.status == plain.status == "ok"
    assert evaluated.losses == plain.losses
    assert evaluated.metrics["fid"]["value"] == plain.metrics["fid"]["value"]
    # none after the last step: the final evaluation is that one
    assert [e["step"] for e in evaluated.evaluations] == [2, 4, 6] == [step for step, _ in reports]
    assert all(set(e) == {"step", "fid"} for e in evaluated.evaluations)  # pooled, no per-class or real floor
    assert evaluated.wall_times["intermediate_evaluate_s"] > 0 and "intermediate_evaluate_s" not in plain.wall_times
    assert saved == [3, 7]  # checkpoints still every 4 steps (after steps 0-3 and 4-7), not at every evaluation
    assert len({e["fid"] for e in evaluated.evaluations} | {plain.metrics["fid"]["value"]}) == 4
    assert TrialResult.load(trial_dir_for(tmp_path / "evaluated", spec) / "result.json").evaluations == \
        evaluated.evaluations


def test_a_trial_stopped_by_its_scheduler_is_recorded_as_stopped(tmp_path, smoke):
    from harness.trial import IntermediateEvaluation, TrialStopped

    suite, dataset = smoke
    spec = _fid_only(_spec(suite, "cgan", steps=8))

    def stop_at_four(step, values):
        if step == 4:
            raise TrialStopped("stopped by the test's scheduler after step 4")

    result = run_trial(spec, tmp_path, dataset=dataset, device="cpu",
                       intermediate=IntermediateEvaluation(("fid",), 2, stop_at_four))
    stored = TrialResult.load(trial_dir_for(tmp_path, spec) / "result.json")
    assert result.status == stored.status == "stopped" and "after step 4" in stored.error
    assert [e["step"] for e in stored.evaluations] == [2, 4] and stored.metrics == {}
    assert max(r["step"] for r in stored.losses) < 4 and "fit_s" in stored.wall_times
    assert not (trial_dir_for(tmp_path, spec) / "samples.pt").exists()


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
