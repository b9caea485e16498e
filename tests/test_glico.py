"""GLICO (methods/glico.py): latent codes on the sphere, interpolation, losses, inductive code table, perceptual
backbones (VGG-16 from a local file only, base-class CNN, pixel), what its state holds.

The method contract (shapes, finite losses, state round trip, resume, seeding) is checked on every method in
``tests/test_method_contract.py``. Tiny networks (code 16, width 4), a handful of images and a few steps on the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from pydantic import ValidationError

from harness.api import Budget, FewShotTask, LabeledImages, NullHooks, TrialDiverged
from methods import glico as glico_module
from methods.glico import (
    GLICO,
    VGG16_WEIGHTS_FILE,
    GLICOConfig,
    GlicoGenerator,
    lerp_normalised,
    slerp,
)

NUM_CLASSES = 5  # classes 0-2 base, 3-4 novel
TINY = {
    "code_dim": 16, "noise_dim": 8, "hidden": 32, "width": 4, "classifier_width": 4, "base_classifier_width": 4,
    "base_classifier_steps": 3,
}


def smooth_images(n: int, shape: tuple[int, int, int], g: torch.Generator) -> torch.Tensor:
    """Blurry random images in [0, 1] (low-resolution noise up-sampled): easy to reconstruct, unlike pixel noise."""
    c, h, w = shape
    low = torch.rand(n, c, 4, 4, generator=g)
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def make_task(size: int = 28, channels: int = 1, seed: int = 0, shots: int = 3, base_per_class: int = 4) -> FewShotTask:
    g = torch.Generator().manual_seed(1234)
    shape = (channels, size, size)
    n_base = 3 * base_per_class
    base = LabeledImages(smooth_images(n_base, shape, g), torch.arange(n_base) % 3)
    novel = LabeledImages(smooth_images(2 * shots, shape, g), torch.tensor([3, 4] * shots))
    return FewShotTask(base, novel, (0, 1, 2), (3, 4), shape, seed)


def make(size: int = 28, channels: int = 1, **overrides) -> GLICO:
    return GLICO(GLICOConfig(**{**TINY, **overrides}), (channels, size, size), NUM_CLASSES, "cpu")


def budget(steps: int) -> Budget:
    return Budget(steps=steps, batch_size=4)


def draw(method: GLICO, n: int = 6, seed: int = 7) -> torch.Tensor:
    labels = torch.tensor([3, 4] * (n // 2))
    return method.sample(labels, torch.Generator().manual_seed(seed))


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


# ---- config and class facts ------------------------------------------------------------------------------------------

def test_class_facts_and_config():
    assert GLICO.name == "glico" and GLICO.conditional is True and GLICO.description
    c = GLICOConfig()
    assert (c.code_dim, c.noise_dim, c.noise_std, c.noise_proj) == (512, 100, 0.15, False)
    assert (c.lr_codes, c.lr_g, c.betas, c.gamma) == (1e-3, 7e-4, (0.5, 0.999), 0.5)
    assert c.perceptual == "base_classifier" and c.vgg16_weights is None and c.interpolation == "slerp"
    assert c.slerp_t == (0.1, 0.2, 0.3, 0.4) and c.use_base is False
    for name, field in GLICOConfig.model_fields.items():
        assert field.description, f"field {name} has no description"
    with pytest.raises(ValidationError):
        GLICOConfig(not_a_field=1)
    with pytest.raises(ValidationError):
        GLICOConfig(slerp_t=(0.5, 1.5))
    with pytest.raises(ValidationError):
        GLICOConfig(perceptual="resnet")
    with pytest.raises(ValidationError):
        GLICOConfig(perceptual="base_classifier", perceptual_levels=5)


@pytest.mark.parametrize("size", [16, 30])
def test_unsupported_size_raises(size):
    with pytest.raises(ValueError, match="supports image sizes"):
        make(size=size, perceptual="pixel")


# ---- the sphere and interpolation ------------------------------------------------------------------------------------

def test_code_norms_are_one_after_steps():
    method = make(perceptual="pixel")
    method.fit(make_task(), budget(5), NullHooks())
    norms = method.codes.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
    # the codes did move (Adam steps) and were projected back, not merely left at their initial values
    fresh = make(perceptual="pixel")
    fresh.fit(make_task(), budget(1), NullHooks())
    assert not torch.allclose(fresh.codes, method.codes)


def test_slerp_endpoints_sphere_and_constant_speed():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 16, generator=g) * 3, torch.randn(6, 16, generator=g) * 0.5
    ua, ub = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    torch.testing.assert_close(slerp(a, b, 0.0), ua)
    torch.testing.assert_close(slerp(a, b, 1.0), ub)
    t = torch.rand(6, generator=g)
    z = slerp(a, b, t)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(6))
    omega = torch.acos((ua * ub).sum(1))
    torch.testing.assert_close(torch.acos((ua * z).sum(1).clamp(-1, 1)), t * omega, atol=1e-4, rtol=1e-4)
    # lerp (re-normalised) is on the sphere too, shares the endpoints, but is a different path
    zl = lerp_normalised(a, b, t)
    torch.testing.assert_close(zl.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(lerp_normalised(a, b, 0.0), ua)
    assert (zl - z).abs().max() > 1e-3
    # identical endpoints: no NaN
    torch.testing.assert_close(slerp(ua, ua, 0.3), ua)


def test_lerp_option_changes_the_sampled_codes():
    task = make_task()
    slerp_m, lerp_m = make(perceptual="pixel"), make(perceptual="pixel", interpolation="lerp")
    slerp_m.fit(task, budget(2), NullHooks())
    lerp_m.fit(task, budget(2), NullHooks())
    torch.testing.assert_close(slerp_m.codes, lerp_m.codes)  # same training
    labels = torch.tensor([3, 4, 3, 4])
    zs, a, b, t = slerp_m.interpolate_codes(labels, torch.Generator().manual_seed(1))
    zl, a2, b2, t2 = lerp_m.interpolate_codes(labels, torch.Generator().manual_seed(1))
    assert torch.equal(a, a2) and torch.equal(b, b2) and torch.equal(t, t2)
    torch.testing.assert_close(zl, lerp_normalised(lerp_m.codes[a], lerp_m.codes[b], t))
    assert (zs - zl).abs().max() > 1e-4


# ---- losses and training ---------------------------------------------------------------------------------------------

def test_reconstruction_loss_falls():
    g = torch.Generator().manual_seed(5)
    shape = (1, 28, 28)
    novel = LabeledImages(smooth_images(8, shape, g), torch.tensor([3, 4] * 4))
    empty = LabeledImages(torch.empty(0, *shape), torch.empty(0, dtype=torch.long))
    task = FewShotTask(empty, novel, (), (3, 4), shape, 0)
    method = make(perceptual="pixel", gamma=0.0, width=8, hidden=64, lr_codes=1e-2, lr_g=1e-2)
    hooks = NullHooks()
    method.fit(task, Budget(steps=50, batch_size=8), hooks)
    first, final = hooks.records[0][1]["rec"], hooks.records[-1][1]["rec"]
    assert hooks.records[-1][0] == 49
    assert final < 0.6 * first, (first, final)
    # the reconstructions of the codes now look like their own images more than like the others
    rec = method.reconstruct()
    err = (rec[:, None] - novel.images[None]).abs().flatten(2).mean(2)  # err[i, j]: code i vs image j
    assert (err.argmin(1) == torch.arange(8)).float().mean() >= 0.75


def test_losses_and_info_of_every_step():
    method = make()
    hooks = NullHooks()
    method.fit(make_task(), budget(3), hooks)
    assert [r[0] for r in hooks.records] == [0, 1, 2]
    for _, losses, info in hooks.records:
        assert set(losses) == {"loss", "rec", "pixel", "cls", "cls_acc"}
        assert all(math.isfinite(v) for v in losses.values())
        assert losses["rec"] > losses["pixel"] > 0  # perceptual levels add to the pixel term
        assert info["perceptual"] == "base_classifier" and info["pool_images"] == 6
        assert math.isfinite(info["base_classifier_loss"])
    assert method.step == 3


def test_diverged_base_classifier_stops_the_fit():
    """The base-classifier pre-training is not a generator step (the harness sees none of its losses), so GLICO checks
    it itself, before any step."""
    task = make_task()
    bad = LabeledImages(torch.full_like(task.base.images, float("nan")), task.base.labels)
    task = FewShotTask(bad, task.novel, task.base_classes, task.novel_classes, task.image_shape, 0)
    hooks = NullHooks()
    with pytest.raises(TrialDiverged, match="base classifier loss nan"):
        make().fit(task, budget(1), hooks)
    assert hooks.records == []


def test_classification_loss_trains_the_classifier_on_reconstructions():
    method = make(perceptual="pixel")
    task = make_task()
    before = params(method.G)
    method.fit(task, budget(2), NullHooks())
    assert method.classifier is not None and method.classifier.head.out_features == 2  # the novel classes only
    assert any(not torch.equal(p, q) for p, q in zip(before, params(method.G)))
    no_cls = make(perceptual="pixel", gamma=0.0)
    no_cls.fit(task, budget(2), NullHooks())
    assert no_cls.classifier is None


@pytest.mark.parametrize("schedule", ["official", "long"])
def test_lr_decay_by_epochs(schedule):
    method = make(perceptual="pixel", lr_decay_epochs=1, lr_decay_rate=0.5, schedule=schedule)
    method.fit(make_task(shots=3), budget(5), NullHooks())  # 6 images, batch 4: 2 steps per epoch; step 4 is epoch 2
    assert method.opt_g.param_groups[0]["lr"] == pytest.approx(7e-4 * 0.25)
    assert method.opt_codes.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)


# ---- schedules: official (epochs, fresh optimisers, halving every 70 epochs) and long --------------------------------

class OptimiserHooks(NullHooks):
    """Records, after every step, the rates of the codes' and generator's Adam, how many steps each optimiser has
    taken (Adam's own counter: 1 right after it was created) and the classifier's SGD object (kept, so that a new
    one cannot reuse its address)."""

    def __init__(self, method: GLICO) -> None:
        super().__init__(log_every=10**9)
        self.method, self.seen = method, []

    def step_end(self, step, losses, info=None) -> None:
        m = self.method
        adam_steps = [int(next(iter(opt.state.values()))["step"]) for opt in (m.opt_codes, m.opt_g)]
        self.seen.append((m.opt_codes.param_groups[0]["lr"], m.opt_g.param_groups[0]["lr"], adam_steps, m.opt_c))


def test_official_schedule_halves_the_rates_every_70_epochs():
    """The schedule the fit applies before each step, driven over 141 epochs of 2 steps (6 images, batch 4) without
    training 282 steps: the rates of the optimisers it creates at each epoch's first step."""
    method = make(perceptual="pixel", gamma=0.0)  # official by default
    method.fit(make_task(shots=3), budget(1), NullHooks())
    seen = {}
    for step in range(2 * 141):
        method._schedule(step, 2)
        seen[step // 2] = (method.opt_codes.param_groups[0]["lr"], method.opt_g.param_groups[0]["lr"])
    for epoch, halvings in [(0, 0), (69, 0), (70, 1), (139, 1), (140, 2)]:  # official: lr · 0.5^(epoch // 70)
        assert seen[epoch] == pytest.approx((1e-3 / 2**halvings, 7e-4 / 2**halvings)), epoch


@pytest.mark.parametrize("schedule", ["official", "long"])
def test_official_recreates_the_optimisers_every_epoch_and_long_keeps_them(schedule):
    method = make(schedule=schedule)  # with the joint classifier (its SGD is re-created too under official)
    hooks = OptimiserHooks(method)
    method.fit(make_task(shots=3), budget(7), hooks)  # 6 images, batch 4: epochs start at steps 0, 2, 4, 6
    adam_steps = [seen[2] for seen in hooks.seen]
    sgd_objects = [seen[3] for seen in hooks.seen]
    if schedule == "official":
        assert adam_steps == [[s % 2 + 1] * 2 for s in range(7)]  # state reset at every epoch's first step
        assert [a is b for a, b in zip(sgd_objects, sgd_objects[1:])] == [True, False] * 3
    else:
        assert adam_steps == [[s + 1] * 2 for s in range(7)]  # one state for the whole fit
        assert all(sgd is sgd_objects[0] for sgd in sgd_objects)
        assert {seen[:2] for seen in hooks.seen} == {(1e-3, 7e-4)}  # no decay


@pytest.mark.parametrize("use_base", [False, True])
def test_an_epoch_budget_runs_epochs_times_the_batches_of_the_training_set(use_base):
    task = make_task(shots=3, base_per_class=4)  # 6 novel images, 12 base images
    n = len(task.novel) + (len(task.base) if use_base else 0)
    method = make(perceptual="pixel", use_base=use_base)
    assert method.steps_for(task, Budget(steps=5, epochs=202, batch_size=4)) == 202 * math.ceil(n / 4)
    assert method.steps_for(task, Budget(steps=5, epochs=202, batch_size=64)) == 202  # the batch is the whole set
    assert method.steps_for(task, Budget(steps=5, batch_size=4)) == 5  # a step budget is steps
    hooks = NullHooks()
    method.fit(task, Budget(steps=1, epochs=2, batch_size=4), hooks)
    assert [r[0] for r in hooks.records] == list(range(2 * math.ceil(n / 4)))


def test_a_fit_resumed_mid_schedule_equals_the_uninterrupted_one():
    """Interrupted inside an epoch after a decay (lr_decay_epochs 2, 2 steps per epoch: step 5 is the second step of
    epoch 2, whose optimisers were created at step 4 with halved rates), resumed in a new instance."""
    from test_method_contract import SnapshotHooks, differences

    task, total = make_task(shots=3), Budget(steps=1, epochs=4, batch_size=4)
    straight = make(lr_decay_epochs=2)
    snapshot = SnapshotHooks(straight, at=4)
    straight.fit(task, total, snapshot)
    resumed, hooks = make(lr_decay_epochs=2), NullHooks()
    resumed.load_state_dict(snapshot.state)
    assert resumed.opt_g.param_groups[0]["lr"] == pytest.approx(7e-4 / 2)
    resumed.fit(task, total, hooks)
    assert [r[0] for r in hooks.records] == [5, 6, 7]
    assert hooks.records == snapshot.records[5:]
    assert differences(resumed.state_dict(), straight.state_dict()) == []
    assert torch.equal(draw(resumed), draw(straight))


# sha256 (16 hex digits) of a short fit's codes, generator, classifier and samples, recorded with the code before
# the schedules existed (the fit that is now schedule="long"), 1 torch thread, on this CPU and build
LONG_SCHEDULE_RECORD = {"cpu_model": "AMD EPYC", "torch": "2.14.1+cu130", "torch_cpu_capability": "AVX512",
                        "hashes": {0: "73078f14b8527556", 1: "579b99b2de9bc41e"}}


@pytest.mark.parametrize("lr_decay_epochs", [0, 1])
def test_the_long_schedule_reproduces_the_earlier_fit_bit_for_bit(lr_decay_epochs):
    import hashlib

    from harness.runtime import host_facts

    facts, record = host_facts(torch.device("cpu")), LONG_SCHEDULE_RECORD
    here = (facts["cpu_model"], torch.__version__, facts["torch_cpu_capability"])
    if here != (record["cpu_model"], record["torch"], record["torch_cpu_capability"]):
        pytest.skip(f"bit-for-bit record is for {record['cpu_model']}, torch {record['torch']}; this is {here}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # the fp32 code path of the record (bf16 + channels-last became the default later: defaults version 3)
        method = make(schedule="long", lr_decay_epochs=lr_decay_epochs, precision="fp32", channels_last=False)
        method.fit(make_task(shots=3), budget(7), NullHooks())
        digest = hashlib.sha256()
        for t in [method.codes, *method.G.state_dict().values(), *method.classifier.state_dict().values(),
                  draw(method)]:
            digest.update(t.detach().contiguous().numpy().tobytes())
    finally:
        torch.set_num_threads(threads)
    assert digest.hexdigest()[:16] == record["hashes"][lr_decay_epochs]


@pytest.mark.parametrize("noise_proj", [False, True])
def test_official_noise_input_ties_the_noise_to_its_projection(noise_proj):
    concat = make(perceptual="pixel", noise_proj=noise_proj)
    official = make(perceptual="pixel", noise_proj=noise_proj, noise_input="official")
    code_dim, noise_dim = TINY["code_dim"], TINY["noise_dim"]
    assert concat.G.lin_in.in_features == code_dim + noise_dim
    assert official.G.lin_in.in_features == code_dim + (noise_dim if noise_proj else 0)
    assert (official.G.noise_proj is not None) == noise_proj
    official.fit(make_task(), budget(2), NullHooks())
    assert draw(official).shape == (6, 1, 28, 28)


def test_epoch_batches_visit_every_image_once_per_epoch():
    method = make(perceptual="pixel")
    method.fit(make_task(shots=3), budget(1), NullHooks())
    method._order, method._pos = None, 0
    targets = torch.zeros(6, dtype=torch.long)
    seen = torch.cat([method._next_batch(6, 4, targets) for _ in range(4)])  # 4 + 2, 4 + 2
    assert [len(seen[:4]), len(seen[4:6])] == [4, 2]
    assert sorted(seen[:6].tolist()) == list(range(6)) and sorted(seen[6:].tolist()) == list(range(6))


def test_class_balanced_sampling_with_base():
    task = make_task(shots=2, base_per_class=10)
    method = make(perceptual="pixel", use_base=True, sampling="class_balanced")
    hooks = NullHooks()
    method.fit(task, budget(2), hooks)
    assert all(math.isfinite(v) for v in hooks.records[-1][1].values())
    targets = method._class_index(method.code_labels, method.classes)
    idx = method._next_batch(len(targets), 5000, targets)
    freq = torch.bincount(targets[idx], minlength=5).float() / 5000
    assert (freq - 0.2).abs().max() < 0.03  # novel classes (2 shots) as frequent as base classes (10 images)


# ---- inductive code table --------------------------------------------------------------------------------------------

def test_codes_exist_only_for_the_task_training_images():
    task = make_task(shots=3, base_per_class=4)
    novel_only = make(perceptual="pixel")
    novel_only.fit(task, budget(2), NullHooks())
    assert novel_only.codes.shape == (len(task.novel), 16)
    assert torch.equal(novel_only.code_labels, task.novel.labels)
    assert novel_only.classes == (3, 4)

    with_base = make(perceptual="pixel", use_base=True)
    with_base.fit(task, budget(2), NullHooks())
    assert with_base.codes.shape == (len(task.novel) + len(task.base), 16)
    assert torch.equal(with_base.code_labels, torch.cat([task.novel.labels, task.base.labels]))
    assert with_base.classes == (0, 1, 2, 3, 4)
    assert with_base.classifier.head.out_features == 5
    # a state of another task (different images) cannot be resumed on this one
    other = make_task(shots=2)
    with pytest.raises(ValueError, match="do not belong"):
        novel_only.fit(other, budget(4), NullHooks())


def test_code_i_reconstructs_image_i():
    """Code row i is learnt from pool image i (novel shots in task order): no code is attached to anything else."""
    shape = (1, 28, 28)
    images = torch.zeros(4, *shape)
    images[0, :, :14] = 1
    images[1, :, 14:] = 1
    images[2, :, :, :14] = 1
    images[3, :, :, 14:] = 1
    novel = LabeledImages(images, torch.tensor([3, 3, 4, 4]))
    empty = LabeledImages(torch.empty(0, *shape), torch.empty(0, dtype=torch.long))
    task = FewShotTask(empty, novel, (), (3, 4), shape, 0)
    method = make(perceptual="pixel", gamma=0.0, width=8, hidden=64, lr_codes=1e-2, lr_g=1e-2)
    method.fit(task, Budget(steps=60, batch_size=4), NullHooks())
    err = (method.reconstruct()[:, None] - images[None]).abs().flatten(2).mean(2)
    assert torch.equal(err.argmin(1), torch.arange(4))


# ---- sampling --------------------------------------------------------------------------------------------------------

def test_samples_interpolate_codes_of_the_requested_class():
    method = make(perceptual="pixel")
    method.fit(make_task(shots=3), budget(3), NullHooks())
    labels = torch.tensor([3, 4, 4, 3, 3, 4, 3, 4] * 4)
    z, a, b, t = method.interpolate_codes(labels, torch.Generator().manual_seed(0))
    assert torch.equal(method.code_labels[a], labels) and torch.equal(method.code_labels[b], labels)
    assert (a != b).all()  # two different codes of the class
    assert all(min(abs(x - v) for v in (0.1, 0.2, 0.3, 0.4)) < 1e-6 for x in t.tolist())
    assert len({round(x, 3) for x in t.tolist()}) > 1
    torch.testing.assert_close(z, slerp(method.codes[a], method.codes[b], t))
    torch.testing.assert_close(z.norm(dim=1), torch.ones(len(labels)))


def test_one_shot_class_samples_its_only_code():
    shape = (1, 28, 28)
    g = torch.Generator().manual_seed(0)
    novel = LabeledImages(smooth_images(3, shape, g), torch.tensor([3, 4, 4]))
    empty = LabeledImages(torch.empty(0, *shape), torch.empty(0, dtype=torch.long))
    method = make(perceptual="pixel")
    method.fit(FewShotTask(empty, novel, (), (3, 4), shape, 0), budget(2), NullHooks())
    z, a, b, _ = method.interpolate_codes(torch.tensor([3, 3]), torch.Generator().manual_seed(0))
    assert a.tolist() == [0, 0] and b.tolist() == [0, 0]
    torch.testing.assert_close(z, method.codes[[0, 0]])


def test_samples_look_like_their_class():
    """Class 3 = dark images, class 4 = bright images: the samples of each class follow (a functional check)."""
    shape = (1, 28, 28)
    g = torch.Generator().manual_seed(0)
    dark = 0.15 * smooth_images(4, shape, g)
    bright = 1 - 0.15 * smooth_images(4, shape, g)
    novel = LabeledImages(torch.cat([dark, bright]), torch.tensor([3] * 4 + [4] * 4))
    empty = LabeledImages(torch.empty(0, *shape), torch.empty(0, dtype=torch.long))
    method = make(perceptual="pixel", width=8, hidden=64, lr_codes=1e-2, lr_g=1e-2)
    method.fit(FewShotTask(empty, novel, (), (3, 4), shape, 0), Budget(steps=40, batch_size=8), NullHooks())
    labels = torch.tensor([3, 4] * 8)
    x = method.sample(labels, torch.Generator().manual_seed(1))
    means = x.flatten(1).mean(1)
    assert means[labels == 3].max() < 0.35 < 0.65 < means[labels == 4].min()


def test_sample_errors():
    method = make(perceptual="pixel")
    with pytest.raises(RuntimeError, match="fit"):
        draw(method)
    method.fit(make_task(), budget(1), NullHooks())
    with pytest.raises(ValueError, match="no codes for classes \\[1\\]"):
        method.sample(torch.tensor([3, 1]), torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("size", "channels"), [(28, 3), (32, 1), (32, 3), (64, 1), (64, 3)])  # 28×28×1: the contract
def test_shapes_range_and_finite(size, channels):
    method = make(size=size, channels=channels)
    hooks = NullHooks()
    method.fit(make_task(size=size, channels=channels), budget(2), hooks)
    assert all(math.isfinite(v) for _, losses, _ in hooks.records for v in losses.values())
    x = draw(method, 6)
    assert x.shape == (6, channels, size, size)
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    assert method.sample(torch.tensor([], dtype=torch.long), torch.Generator()).shape == (0, channels, size, size)


@pytest.mark.parametrize("size", [28, 32, 64])
def test_generator_shape_official_at_width_64(size):
    G = GlicoGenerator(512, 100, 3, size, width=64, noise_proj=True)
    out = G(torch.randn(2, 512), torch.randn(2, 100))
    assert out.shape == (2, 3, size, size) and out.min() >= 0 and out.max() <= 1
    if size in (28, 32):  # official _netG: 128 channels at size/4, then 64, then the image
        assert G.shape == (128, size // 4, size // 4)
        assert [c.out_channels for c in G.convs] == [64, 3]
    # the code is normalised inside the generator: its scale does not matter
    z, e = torch.randn(2, 512), torch.randn(2, 100)
    torch.testing.assert_close(G(z, e), G(z * 7, e))


# ---- state and reproducibility ---------------------------------------------------------------------------------------

def test_state_of_another_method_or_shape_is_refused():
    method = make(perceptual="pixel")
    method.fit(make_task(), budget(1), NullHooks())
    state = method.state_dict()
    with pytest.raises(ValueError, match="cannot be loaded"):
        make(perceptual="pixel").load_state_dict({**state, "method": "dcgan"})
    with pytest.raises(ValueError, match="state is for images"):
        make(size=32, perceptual="pixel").load_state_dict(state)


# ---- perceptual backbones --------------------------------------------------------------------------------------------

def test_base_classifier_trains_only_on_base_classes(monkeypatch):
    task = make_task(shots=3, base_per_class=4)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = GLICO._train_base_classifier

    def spy(self, images, targets):
        seen.append((images.clone(), targets.clone()))
        return original(self, images, targets)

    monkeypatch.setattr(GLICO, "_train_base_classifier", spy)
    method = make(base_classifier_steps=4)
    method.fit(task, budget(2), NullHooks())
    assert len(seen) == 1
    images, targets = seen[0]
    torch.testing.assert_close(images, task.base.images * 2 - 1)  # exactly the base images, nothing novel
    assert torch.equal(targets, task.base.labels)  # base classes 0-2 map to outputs 0-2
    net = method.base_classifier
    assert net.head.out_features == len(task.base_classes) == 3
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert method.base_classes == (0, 1, 2)
    # frozen: further GLICO steps do not change it
    before = params(net)
    method.fit(task, budget(4), NullHooks())
    assert all(torch.equal(p, q) for p, q in zip(before, params(method.base_classifier)))
    assert len(seen) == 1  # trained once, not again on resume


def test_cached_real_features_give_the_same_loss():
    task = make_task()
    method = make()
    method.fit(task, budget(2), NullHooks())
    images = task.novel.images * 2 - 1
    fake = method.reconstruct() * 2 - 1
    idx = torch.tensor([4, 0, 2])
    uncached = method.reconstruction_loss(fake[idx], images[idx])
    method._cache_features(images)
    assert method._feature_cache is not None and len(method._feature_cache) == method.levels == 3
    cached = method.reconstruction_loss(fake[idx], images[idx], idx)
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)
    assert cached[0] > cached[1]  # the perceptual levels are in it


def test_base_classifier_needs_base_images():
    task = make_task()
    empty = LabeledImages(torch.empty(0, *task.image_shape), torch.empty(0, dtype=torch.long))
    no_base = FewShotTask(empty, task.novel, (), task.novel_classes, task.image_shape, 0)
    with pytest.raises(ValueError, match="base images"):
        make().fit(no_base, budget(1), NullHooks())
    make(perceptual="pixel").fit(no_base, budget(1), NullHooks())  # fine without a base-class network


def test_vgg16_missing_file_error_names_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / VGG16_WEIGHTS_FILE
    with pytest.raises(FileNotFoundError, match=str(missing).replace("\\", "\\\\")) as err:
        make(size=32, perceptual="vgg16", vgg16_weights=str(missing))
    assert "never" in str(err.value).lower() or "nothing is downloaded" in str(err.value).lower()
    # default location: the torch hub cache
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as err:
        make(size=32, perceptual="vgg16")
    assert str(tmp_path / "hub" / "checkpoints" / VGG16_WEIGHTS_FILE) in str(err.value)


@pytest.fixture(scope="module")
def random_vgg16_file(tmp_path_factory):
    """A randomly initialised torchvision VGG-16 ``features`` state dict, saved as torchvision names it."""
    torch.manual_seed(0)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    path = tmp_path_factory.mktemp("hub") / "checkpoints" / VGG16_WEIGHTS_FILE
    path.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path, features


@pytest.mark.parametrize("channels", [1, 3])
def test_vgg16_from_file_taps_and_frozen(random_vgg16_file, channels):
    path, reference = random_vgg16_file
    method = make(size=32, channels=channels, perceptual="vgg16", vgg16_weights=str(path))
    vgg = method.vgg
    assert not any(p.requires_grad for p in vgg.parameters()) and not vgg.training
    # the weights are the file's
    torch.testing.assert_close(vgg.layers[12].weight, reference[12].weight, rtol=0, atol=0)
    # taps (official layer_ids 2, 7, 12 at 32 px): relu1_2, relu2_2, conv3_2, as the in-place ReLU leaves them
    x = torch.rand(2, channels, 32, 32) * 2 - 1
    taps = vgg(x)
    assert [tuple(t.shape[1:]) for t in taps] == [(64, 32, 32), (128, 16, 16), (256, 8, 8)]
    ref_in = x.expand(-1, 3, -1, -1)
    reference.eval()
    with torch.no_grad():
        expected = [reference[:4](ref_in), reference[:9](ref_in), reference[:13](ref_in)]
    for got, want in zip(taps, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # one training step: finite, the generator learns through VGG, VGG gets no gradients
    before = params(method.G)
    hooks = NullHooks()
    method.fit(make_task(size=32, channels=channels), budget(1), hooks)
    losses = hooks.records[0][1]
    assert all(math.isfinite(v) for v in losses.values()) and losses["rec"] > losses["pixel"]
    assert all(p.grad is None for p in method.vgg.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(before, params(method.G)))
    assert "vgg" not in "".join(method.state_dict())  # the fixed ImageNet weights are not checkpointed


def test_vgg16_from_the_hub_cache(random_vgg16_file, monkeypatch):
    path, _ = random_vgg16_file
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(path.parent.parent))
    method = make(size=32, perceptual="vgg16")
    assert len(method.vgg(torch.zeros(1, 3, 32, 32))) == 3


def test_vgg16_imagenet_norm_option(random_vgg16_file):
    path, _ = random_vgg16_file
    plain = glico_module.load_vgg16_features(path, 1)
    normed = glico_module.load_vgg16_features(path, 1, imagenet_norm=True)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert not torch.allclose(plain(x)[0], normed(x)[0])


def test_pixel_perceptual_has_no_feature_network():
    method = make(perceptual="pixel")
    hooks = NullHooks()
    method.fit(make_task(), budget(1), hooks)
    assert method.vgg is None and method.base_classifier is None
    losses = hooks.records[0][1]
    assert losses["rec"] == pytest.approx(losses["pixel"])
