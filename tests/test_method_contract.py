"""The method contract of harness/api.py, checked on every registered method: the built-ins and any plugin installed
through the ``harness.methods`` entry-point group (one fake plugin is installed here to show that they are picked up).

What the harness relies on, and what each test checks:

* ``sample`` returns n×C×H×W floats in [0, 1]; one ``fit`` step reports finite losses through ``hooks.step_end``
  (the trial's divergence check and loss curves read them there), once per generator step, 0-based;
* a ``state_dict`` is a snapshot that a new instance loads to sample identically (checkpoints, ``samples.pt``);
* a state taken in ``step_end`` (where the harness checkpoints) or after ``fit`` returns resumes, in a new instance,
  to exactly the uninterrupted run, and a finished fit is not trained further (resume after an interruption);
* the result depends on ``task.seed`` alone, not on the global random state (pure trials, bit-identical resume);
* a non-finite loss is reported, not hidden (the harness stops such a trial).

Unconditional methods (``conditional = False``) get what the harness gives them (``PerClassMethod``): one novel
class's shots and nothing else. Per-method behaviour (the papers' losses, networks, sampling) is tested in each
method's own file.
"""

from __future__ import annotations

import math
import sys
import textwrap
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from harness.api import Budget, FewShotTask, GenerativeMethod, LabeledImages, NullHooks, TrialDiverged
from harness.files import load_tensors, save_tensors
from harness.registry import METHODS, Registry

SHAPE = (1, 28, 28)
NUM_CLASSES = 5  # 0-2 base (4 images each), 3-4 novel (3 shots each)
BASE_CLASSES, NOVEL_CLASSES = (0, 1, 2), (3, 4)
UNCONDITIONAL_CLASS = 4  # the one novel class an unconditional method is fitted on

# Parameters of a tiny, fast instance of each built-in method (networks a few channels wide). A method not listed
# (a plugin) is built from its Config() defaults, the paper's settings: valid, only slower; a plugin that wants to be
# fast here gives its Config small defaults, as the fake plugin below does.
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "dcgan": {"width": 8, "z_dim": 8},
    "wgan": {"width": 8, "z_dim": 8},
    "wgan_gp": {"width": 8, "z_dim": 8},
    "cgan": {"width": 8, "z_dim": 8},
    "metacgan": {"width": 8, "z_dim": 8, "latent_dim": 8},
    "glico": {"code_dim": 16, "noise_dim": 8, "hidden": 32, "width": 4, "classifier_width": 4,
              "base_classifier_width": 4, "base_classifier_steps": 3},
}
# Methods whose fit only stores the shots (the copy_shots / augment_shots baselines): no parameters move, so
# "training on changes the samples" and "the seed changes the result" become their opposites -- the samples depend on
# the stored shots and the sampling generator alone (the seed picks the shots, but that is the harness's split).
STORE_ONLY = {"copy_shots", "augment_shots"}
# Options that change what a method draws from its random generator or what its state holds, checked as variants of
# the tiny instance: DiffAugment draws every augmentation from it, so determinism and resume must hold with it on too;
# GLICO's long schedule keeps one optimiser state where the default official one re-creates it every epoch.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    **{name: {"diffaugment": {"diffaugment": True}} for name in ("dcgan", "wgan", "wgan_gp", "cgan", "metacgan")},
    "glico": {"long": {"schedule": "long"}},
}

PLUGIN = "contract_plugin"
PLUGIN_MODULE = "fewshot_contract_plugin"
PLUGIN_SOURCE = f'''
    """An out-of-tree method: a DCGAN whose Config defaults are tiny."""
    from methods.dcgan import DCGAN


    class TinyConfig(DCGAN.Config):
        width: int = 8
        z_dim: int = 8


    class ContractPlugin(DCGAN):
        name = "{PLUGIN}"
        description = "a plugin method installed through the harness.methods entry-point group"
        Config = TinyConfig
'''


def install_plugin(tmp_path, monkeypatch) -> Registry:
    """A distribution declaring a ``harness.methods`` entry point, on ``sys.path``; returns a method registry that
    reads that group, as ``harness.registry.METHODS`` does (built fresh: METHODS scanned the entry points already)."""
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    dist = tmp_path / "fewshot_contract_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fewshot-contract-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[harness.methods]\n{PLUGIN} = {PLUGIN_MODULE}:ContractPlugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, PLUGIN_MODULE, raising=False)
    return Registry("method", METHODS.entry_point_group, base=GenerativeMethod)


@dataclass(frozen=True)
class Case:
    """A registered method (built-in or plugin), by its registered name, with extra config parameters (a variant)."""

    name: str
    cls: type[GenerativeMethod]
    params: dict[str, Any]


CASES = [(name, variant, params) for name in METHODS.names()
         for variant, params in {"": {}, **VARIANTS.get(name, {})}.items()]


@pytest.fixture(params=[*CASES, (PLUGIN, "", {})], ids=lambda c: "+".join(filter(None, c[:2])))
def case(request, tmp_path, monkeypatch) -> Case:
    name, _, params = request.param
    if name != PLUGIN:
        yield Case(name, METHODS.get(name), params)
        return
    yield Case(name, install_plugin(tmp_path, monkeypatch).get(name), params)
    sys.modules.pop(PLUGIN_MODULE, None)


def test_a_plugin_is_found_through_its_entry_point(tmp_path, monkeypatch):
    registry = install_plugin(tmp_path, monkeypatch)
    assert PLUGIN in registry.names() and PLUGIN not in METHODS.names()
    assert registry.target(PLUGIN) == f"{PLUGIN_MODULE}:ContractPlugin"
    sys.modules.pop(PLUGIN_MODULE, None)


# ---- helpers ---------------------------------------------------------------------------------------------------------

def make(case: Case) -> GenerativeMethod:
    cls = case.cls
    config = cls.Config(**{**TINY_PARAMS.get(cls.name, {}), **case.params})
    cls.check_environment(config)  # as the harness does before any trial
    return cls(config, SHAPE, NUM_CLASSES, "cpu")


def make_task(case: Case, seed: int = 0, fill: float | None = None) -> FewShotTask:
    """The task the harness gives the method: base and novel classes for a conditional method, one novel class's
    shots for an unconditional one. ``fill`` replaces every pixel (e.g. NaN)."""
    g = torch.Generator().manual_seed(1234)
    base = LabeledImages(torch.rand(12, *SHAPE, generator=g), torch.arange(12) % 3)
    novel = LabeledImages(torch.rand(6, *SHAPE, generator=g), torch.tensor(NOVEL_CLASSES * 3))
    if fill is not None:
        base = LabeledImages(torch.full_like(base.images, fill), base.labels)
        novel = LabeledImages(torch.full_like(novel.images, fill), novel.labels)
    if case.cls.conditional:
        return FewShotTask(base, novel, BASE_CLASSES, NOVEL_CLASSES, SHAPE, seed)
    empty = LabeledImages(base.images[:0], base.labels[:0])
    return FewShotTask(empty, novel.of_class(UNCONDITIONAL_CLASS), (), (UNCONDITIONAL_CLASS,), SHAPE, seed)


def budget(steps: int) -> Budget:
    return Budget(steps=steps, batch_size=4, log_every=1)


def draw(method: GenerativeMethod, task: FewShotTask, seed: int = 7) -> torch.Tensor:
    labels = torch.tensor(task.novel_classes * (6 // len(task.novel_classes)))
    return method.sample(labels, torch.Generator().manual_seed(seed))


def differences(a: Any, b: Any, path: str = "state") -> list[str]:
    """Where two states differ: tensors compared exactly (dtype, shape, values), containers key by key."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path} keys {sorted(map(str, set(a) ^ set(b)))}"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}[{k!r}]")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path} length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


class SnapshotHooks(NullHooks):
    """Records like NullHooks and takes ``method.state_dict()`` in ``step_end`` of step ``at``, where the harness
    takes its checkpoints."""

    def __init__(self, method: GenerativeMethod, at: int) -> None:
        super().__init__(log_every=1)
        self.method, self.at, self.state = method, at, None

    def step_end(self, step, losses, info=None) -> None:
        super().step_end(step, losses, info)
        if step == self.at:
            self.state = self.method.state_dict()


# ---- the contract ----------------------------------------------------------------------------------------------------

def test_class_facts(case):
    cls = case.cls
    assert cls.name == case.name  # the name in results and states is the one suites use
    assert isinstance(cls.conditional, bool) and cls.description
    cls.Config()  # the defaults (the paper's settings) are complete


def test_an_epoch_budget_is_epochs_times_an_epoch_or_refused(case):
    """A step budget runs its steps; an epoch budget is ``epochs × steps_per_epoch`` for a method that declares epochs
    (and the fit runs exactly that many steps), a ValueError naming the field for the others."""
    method, task = make(case), make_task(case)
    assert method.steps_for(task, budget(3)) == 3
    epochs = Budget(steps=3, epochs=2, batch_size=4, log_every=1)
    if not case.cls.supports_epochs:
        with pytest.raises(ValueError, match="budget.epochs"):
            method.steps_for(task, epochs)
        return
    per_epoch = method.steps_per_epoch(task, 4)
    assert per_epoch >= 1 and method.steps_for(task, epochs) == 2 * per_epoch
    hooks = NullHooks()
    method.fit(task, epochs, hooks)
    assert [step for step, _, _ in hooks.records] == list(range(2 * per_epoch))


def test_one_step_reports_finite_losses_and_samples_are_images_in_range(case):
    method, task, hooks = make(case), make_task(case), NullHooks()
    method.fit(task, budget(1), hooks)
    assert [step for step, _, _ in hooks.records] == [0]
    losses = hooks.records[0][1]
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    x = draw(method, task)
    assert x.shape == (6, *SHAPE) and x.dtype.is_floating_point
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    assert x.std() > 0  # not a constant image


def test_state_dict_is_a_snapshot_that_a_new_instance_samples_from_identically(case):
    method, task = make(case), make_task(case)
    method.fit(task, budget(2), NullHooks())
    state, samples = method.state_dict(), draw(method, task)
    method.fit(task, budget(3), NullHooks())  # training on must leave the snapshot as it was ...
    if case.name in STORE_ONLY:  # ... and stores nothing new
        assert torch.equal(draw(method, task), samples)
    else:  # ... and does train
        assert not torch.equal(draw(method, task), samples)
    restored = make(case)
    restored.load_state_dict(state)
    assert torch.equal(draw(restored, task), samples)
    assert differences(restored.state_dict(), state) == []


def test_a_resumed_fit_equals_the_uninterrupted_one(case, tmp_path):
    """Interrupted after 3 of 5 steps, by a checkpoint in step_end or by a smaller budget, then resumed in a new
    instance from that checkpoint written to a file and loaded back the way the harness does (``weights_only``: a
    state holding anything but tensors and plain values could not be resumed from): the same steps, losses, info,
    final state and samples as one uninterrupted fit. (The interruption falls
    inside one of GLICO's epochs, 6 images in batches of 4; MetaCGAN's batch source is in the info and step 4 is a
    base step again, N_c = 4.)"""
    interrupted_after, total = 3, 5
    task = make_task(case)
    straight = make(case)
    straight_hooks = SnapshotHooks(straight, at=interrupted_after - 1)
    straight.fit(task, budget(total), straight_hooks)
    stopped = make(case)
    stopped.fit(task, budget(interrupted_after), NullHooks())
    assert differences(stopped.state_dict(), straight_hooks.state) == []  # the same state, whichever way it was taken

    resumed, hooks = make(case), NullHooks()
    resumed.load_state_dict(load_tensors(save_tensors(tmp_path / "checkpoint.pt", straight_hooks.state)))
    resumed.fit(task, budget(total), hooks)
    assert [r[0] for r in hooks.records] == list(range(interrupted_after, total))
    assert hooks.records == straight_hooks.records[interrupted_after:]
    assert differences(resumed.state_dict(), straight.state_dict()) == []
    assert torch.equal(draw(resumed, task), draw(straight, task))

    again = NullHooks()  # finished: the same budget again trains nothing
    resumed.fit(task, budget(total), again)
    assert again.records == [] and differences(resumed.state_dict(), straight.state_dict()) == []


def test_the_result_depends_on_the_task_seed_only(case):
    runs = []
    for seed, global_seed in ((3, 1), (3, 2), (4, 1)):
        torch.manual_seed(global_seed)  # the global random state plays no part
        method, hooks = make(case), NullHooks()
        method.fit(make_task(case, seed=seed), budget(2), hooks)
        runs.append((method, hooks.records))
    (a, records_a), (b, records_b), (c, _) = runs
    task = make_task(case)
    assert records_a == records_b and differences(a.state_dict(), b.state_dict()) == []
    assert torch.equal(draw(a, task), draw(b, task))
    if case.name in STORE_ONLY:  # the same shots under another seed: the same method
        assert differences(a.state_dict(), c.state_dict()) == [] and torch.equal(draw(a, task), draw(c, task))
    else:
        assert differences(a.state_dict(), c.state_dict()) != [] and not torch.equal(draw(a, task), draw(c, task))
    assert not torch.equal(draw(a, task, seed=1), draw(a, task, seed=2))  # sampling follows its generator


def test_a_non_finite_loss_is_reported_not_hidden(case):
    """With NaN images the first step's losses are not all finite (the harness then stops the trial); a method may
    also stop on its own with TrialDiverged (e.g. a pre-training phase that is not a generator step)."""
    method, hooks = make(case), NullHooks()
    try:
        method.fit(make_task(case, fill=float("nan")), budget(1), hooks)
    except TrialDiverged:
        assert hooks.records == []
        return
    assert not all(math.isfinite(v) for v in hooks.records[0][1].values())
