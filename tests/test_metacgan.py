"""MetaCGAN (methods.metacgan): the meta-learned generator layer, Algorithm 1's alternation, gradients, state.

The method contract (shapes, finite losses, state round trip, resume, seeding) is checked on every method, MetaCGAN
with and without DiffAugment, in ``tests/test_method_contract.py``. Tiny networks (width 8, z 8, latent 8), batches
of 4, one to eight steps on the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from harness.api import Budget, FewShotTask, LabeledImages, NullHooks
from methods.metacgan import MetaCGAN, SupportContext
from methods.nets import Generator, conv_transpose2d_per_sample

NUM_CLASSES = 5  # classes 0-2 base (4 images each), 3-4 novel (2 shots each)
BASE, NOVEL = {0, 1, 2}, {3, 4}
TINY = {"width": 8, "z_dim": 8, "latent_dim": 8}


def make_task(size: int = 28, channels: int = 1, seed: int = 0, base: bool = True) -> FewShotTask:
    g = torch.Generator().manual_seed(1234)
    shape = (channels, size, size)
    novel = LabeledImages(torch.rand(4, *shape, generator=g), torch.tensor([3, 3, 4, 4]))
    if not base:
        empty = LabeledImages(torch.empty(0, *shape), torch.empty(0, dtype=torch.long))
        return FewShotTask(empty, novel, (), (3, 4), shape, seed)
    base_images = LabeledImages(torch.rand(12, *shape, generator=g), torch.arange(12) % 3)
    return FewShotTask(base_images, novel, (0, 1, 2), (3, 4), shape, seed)


def make(size: int = 28, channels: int = 1, num_classes: int = NUM_CLASSES, **overrides) -> MetaCGAN:
    return MetaCGAN(MetaCGAN.Config(**{**TINY, **overrides}), (channels, size, size), num_classes, "cpu")


def budget(steps: int) -> Budget:
    return Budget(steps=steps, batch_size=4)


def draw(method: MetaCGAN, labels=(3, 4, 3, 4, 3, 4), seed: int = 7) -> torch.Tensor:
    return method.sample(torch.tensor(labels), torch.Generator().manual_seed(seed))


def fitted(steps: int = 1, **overrides) -> MetaCGAN:
    method = make(**overrides)
    method.fit(make_task(), budget(steps), NullHooks())
    return method


def shots(task: FewShotTask, label: int) -> torch.Tensor:
    return task.novel.of_class(label).images * 2 - 1  # the training scale


def one_set(support: torch.Tensor, images: torch.Tensor) -> SupportContext:
    """Encoder inputs for ``len(images)`` samples of one class with support set ``support``."""
    return SupportContext(support, torch.zeros(len(support), dtype=torch.long), torch.tensor([float(len(support))]),
                          torch.zeros(len(images), dtype=torch.long), images)


# ---- config ----------------------------------------------------------------------------------------------------------

def test_config_defaults_descriptions_and_identity():
    c = MetaCGAN.Config()
    assert (c.n_c, c.lr_g, c.lr_d, c.beta1, c.beta2) == (4, 2e-4, 2e-4, 0.5, 0.9)
    assert c.encoder_update == "generator" and c.generated_layer == "last"  # defaults version 2
    assert (c.precision, c.channels_last) == ("bf16", True)  # defaults version 3 (reports/bf16_paired)
    assert (c.fold_output, c.label_lookup, c.fused_optimizer) == (True, True, True)  # version 4 (fast_paths_metacgan)
    off = {"fold_output": False, "label_lookup": False, "fused_optimizer": False}
    assert MetaCGAN.defaults_version({}) == 4 and MetaCGAN.defaults_version({"fold_output": False}) == 4
    assert MetaCGAN.defaults_version(off) == 3
    assert MetaCGAN.defaults_version({"encoder_update": "discriminator", **off}) == 3
    assert MetaCGAN.defaults_version({"precision": "fp32", "channels_last": False, **off}) == 2
    assert MetaCGAN.defaults_version({"encoder_update": "discriminator", "precision": "fp32",
                                      "channels_last": False, **off}) == 1
    assert (c.z_dim, c.width, c.diffaugment, c.diffaugment_policy) == (100, 64, False, "color,translation,cutout")
    assert all(f.description for f in MetaCGAN.Config.model_fields.values())
    assert (MetaCGAN.name, MetaCGAN.conditional) == ("metacgan", True) and MetaCGAN.description
    import methods.metacgan as module

    assert "ML-CGAN" in module.__doc__ and "Cognitive Computation" in module.__doc__


@pytest.mark.parametrize("bad", [{"learning_rate": 1e-3}, {"n_c": 0}, {"generated_layer": -1},
                                 {"generated_layer": "first"}, {"encoder_norm": "group"},
                                 {"diffaugment_policy": "color,rotate"}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        MetaCGAN.Config(**bad)


def test_generated_layer_out_of_range_and_wrong_config_type():
    with pytest.raises(ValueError, match="out of range"):
        make(28, generated_layer=2)  # 28×28: two deconvolutions (one up-block, the output layer)
    from methods.cgan import CGAN

    with pytest.raises(TypeError):
        MetaCGAN(CGAN.Config(), (1, 28, 28), NUM_CLASSES)


# ---- networks --------------------------------------------------------------------------------------------------------

def test_per_sample_transposed_convolution_equals_a_loop():
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 6, 5, 5), torch.randn(3, 6, 4, 4, 4), torch.randn(4)
    expected = torch.cat([F.conv_transpose2d(x[i:i + 1], w[i], b, stride=2, padding=1) for i in range(3)])
    torch.testing.assert_close(conv_transpose2d_per_sample(x, w, b), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("index", [0, 1, -1])
def test_generator_deconv_weights_shared_and_per_sample(index):
    torch.manual_seed(0)
    G = Generator(8, 1, 28, width=4, num_classes=3).eval()
    z, y = torch.randn(2, 8), torch.tensor([0, 2])
    w = G.deconvolutions[index].weight
    torch.testing.assert_close(G(z, y, {index: w}), G(z, y))
    torch.testing.assert_close(G(z, y, {index: w.expand(2, *w.shape)}), G(z, y), atol=1e-6, rtol=1e-5)
    other = torch.stack([w, torch.randn_like(w) * 0.1])
    out = G(z, y, {index: other})
    torch.testing.assert_close(out[0], G(z, y)[0], atol=1e-6, rtol=1e-5)  # sample 0 kept its weight
    assert not torch.allclose(out[1], G(z, y)[1])
    with pytest.raises(ValueError, match="shape"):
        G(z, y, {index: torch.randn(3, *w.shape)})


@pytest.mark.parametrize(("size", "layer", "expected"), [
    (28, "last", 1), (28, 0, 0), (64, "last", 3), (64, 0, 0), (64, 2, 2)])
def test_generated_layer_choice(size, layer, expected):
    method = make(size, 3, generated_layer=layer)
    assert method.layer_index == expected
    target = method.G.deconvolutions[expected].weight
    task = make_task(size, 3)
    method.fit(task, budget(1), NullHooks())
    theta = method.generated_weights(one_set(shots(task, 3), shots(task, 3)), torch.zeros(2, 8))
    assert theta.shape == (2, *target.shape)
    assert method.meta.param_generator.weight.shape == (target.numel(), 8)
    x = draw(method)
    assert x.shape == (6, 3, size, size) and torch.isfinite(x).all()


# ---- the meta-learner ------------------------------------------------------------------------------------------------

def test_generated_weights_depend_on_the_support_set_and_the_image():
    method, task = fitted(1), make_task()
    eps = torch.zeros(2, 8)
    a, b = shots(task, 3), shots(task, 4)
    theta_a = method.generated_weights(one_set(a, a), eps)
    theta_b = method.generated_weights(one_set(b, b), eps)
    assert not torch.allclose(theta_a, theta_b)  # two classes → different θ_j
    # the task encoder alone: same image-encoder inputs, different support sets
    assert not torch.allclose(method.generated_weights(one_set(b, a), eps), theta_a)
    # the image encoder alone: same support set, different images
    assert not torch.allclose(method.generated_weights(one_set(a, b), eps), theta_a)
    # the support set is a set: its order does not matter (mean pooling)
    torch.testing.assert_close(method.generated_weights(one_set(a.flip(0), a), eps), theta_a)
    # ... pooled by its mean: every image twice is the same set
    torch.testing.assert_close(method.generated_weights(one_set(torch.cat([a, a]), a), eps), theta_a)
    # ε matters too (z_j = μ_j + σ_j ε), and θ_j is not just the backbone's weight
    assert not torch.allclose(method.generated_weights(one_set(a, a), torch.ones(2, 8)), theta_a)
    assert not torch.allclose(theta_a[0], method.G.deconvolutions[method.layer_index].weight)


def test_codes_are_bounded_whatever_the_encoders_output():
    """μ_j = mean of tanh's, σ_j = mean of sigmoids: z_j cannot grow with the encoders' weights (unbounded codes
    made θ_j explode in training)."""
    method, task = make(), make_task()
    with torch.no_grad():
        for encoder in method.meta.encoders():
            encoder.head.weight.mul_(1e4)
            encoder.head.bias.fill_(50.0)
    a = shots(task, 3)
    mu, sigma = method.meta.encode(one_set(a, a))
    assert mu.abs().max() <= 1 and sigma.min() >= 0 and sigma.max() <= 1
    assert mu.abs().max() > 0.99  # saturated, i.e. the bound is what held them


def record_grads(method: MetaCGAN) -> dict[str, dict[str, list[torch.Tensor | None]]]:
    """Each optimiser's step records the gradients of every part at that moment."""
    parts = {"D": method.D, "G": method.G, "task_encoder": method.meta.task_encoder,
             "image_encoder": method.meta.image_encoder, "param_generator": method.meta.param_generator}
    seen: dict[str, dict[str, list[torch.Tensor | None]]] = {}

    def hook(name):
        def pre_step(optimizer, args, kwargs):
            seen[name] = {part: [None if p.grad is None else p.grad.clone() for p in module.parameters()]
                          for part, module in parts.items()}
        return pre_step

    method.opt_d.register_step_pre_hook(hook("opt_d"))
    method.opt_g.register_step_pre_hook(hook("opt_g"))
    return seen


def nonzero(grads: list[torch.Tensor | None]) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in grads)


def test_gradients_reach_d_encoders_and_parameter_generator():
    """Paper's rule: L_D reaches D and both encoders (through the fake batch's generated weights); L_G reaches the
    generator and the parameter generator."""
    method = make(encoder_update="discriminator")
    seen = record_grads(method)
    before = {k: v.clone() for k, v in method.meta.state_dict().items()}
    method.fit(make_task(), budget(1), NullHooks())
    d_step, g_step = seen["opt_d"], seen["opt_g"]
    for part in ("D", "task_encoder", "image_encoder"):
        assert nonzero(d_step[part]), part
        assert all(g is not None and torch.isfinite(g).all() for g in d_step[part]
                   if g is not None), part
    # G and the parameter generator pass the gradient on but are not trained by L_D
    assert not nonzero(d_step["param_generator"]) and not nonzero(d_step["G"])
    assert nonzero(g_step["param_generator"]) and nonzero(g_step["G"])
    # L_G adds nothing to D's or the encoders' gradients (what they hold at G's step is what their own step used)
    for part in ("D", "task_encoder", "image_encoder"):
        assert all(torch.equal(a, b) for a, b in zip(g_step[part], d_step[part]) if a is not None), part
    # every group of parameters of the task encoder got a gradient (its conv trunk and its head)
    assert all(g is not None for g in d_step["task_encoder"])
    # the optimisers: encoders with D (RMSProp), parameter generator with G (Adam)
    enc = {id(p) for encoder in method.meta.encoders() for p in encoder.parameters()}
    d_ids = {id(p) for group in method.opt_d.param_groups for p in group["params"]}
    g_ids = {id(p) for group in method.opt_g.param_groups for p in group["params"]}
    assert enc <= d_ids and not enc & g_ids and id(method.meta.param_generator.weight) in g_ids
    assert isinstance(method.opt_d, torch.optim.RMSprop) and isinstance(method.opt_g, torch.optim.Adam)
    assert method.opt_g.param_groups[0]["betas"] == (0.5, 0.9)
    after = method.meta.state_dict()
    for key in ("task_encoder.head.weight", "image_encoder.head.weight", "param_generator.weight"):
        assert not torch.equal(before[key], after[key]), key


def test_encoders_trained_with_the_generator_by_default():
    method = make()
    seen = record_grads(method)
    method.fit(make_task(), budget(1), NullHooks())
    for part in ("task_encoder", "image_encoder"):
        assert not nonzero(seen["opt_d"][part]) and nonzero(seen["opt_g"][part]), part
    assert nonzero(seen["opt_d"]["D"]) and nonzero(seen["opt_g"]["param_generator"])
    d_ids = {id(p) for group in method.opt_d.param_groups for p in group["params"]}
    assert not {id(p) for p in method.meta.image_encoder.parameters()} & d_ids


# ---- the notes' open readings: norms, D's optimiser start ---------------------------------------------------------

@pytest.mark.parametrize(("generator_norm", "discriminator_norm"), [("instance", "instance"), ("batch", "instance"),
                                                                     ("instance", "batch"), ("none", "layer")])
def test_norms_present_where_configured(generator_norm, discriminator_norm):
    kinds = {"batch": torch.nn.BatchNorm2d, "instance": torch.nn.InstanceNorm2d, "layer": torch.nn.GroupNorm,
             "none": torch.nn.Identity}
    method = make(generator_norm=generator_norm, discriminator_norm=discriminator_norm)
    g_norms = [method.G.stem.norm, *(block.norm for block in method.G.blocks)]
    d_norms = [block.norm for block in method.D.blocks[1:]]  # DCGAN: no norm on D's first block
    assert g_norms and all(type(n) is kinds[generator_norm] for n in g_norms)
    assert d_norms and all(type(n) is kinds[discriminator_norm] for n in d_norms)
    others = set(kinds) - {generator_norm, discriminator_norm, "none"}
    present = {type(m) for m in [*method.G.modules(), *method.D.modules()]}
    assert not present & {kinds[k] for k in others}
    # the encoders keep their own norm (instance by default)
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in method.meta.task_encoder.modules())
    method.fit(make_task(), budget(2), NullHooks())
    assert torch.isfinite(draw(method)).all()


def d_update(start: str) -> tuple[list[torch.Tensor], list[torch.Tensor], MetaCGAN]:
    """D's gradient at its first step and the change of D's weights that step made."""
    # encoders in D's optimiser (checked below)
    method = make(d_optimizer_start=start, lr_d=1e-3, encoder_update="discriminator")
    before = [p.detach().clone() for p in method.D.parameters()]
    seen = record_grads(method)
    method.fit(make_task(), budget(1), NullHooks())
    deltas = [p.detach() - b for p, b in zip(method.D.parameters(), before)]
    return seen["opt_d"]["D"], deltas, method


@pytest.mark.parametrize(("start", "rate", "correction"), [
    ("pytorch", 1e-3, 1 - 0.99),          # v_1 = (1 − α) g², not corrected: ~10× the rate
    ("bias_corrected", 1e-3, 1.0),        # v_1 / (1 − α¹) = g²: the nominal rate
    ("warmup", 1e-3 / 100, 1 - 0.99),     # PyTorch's start at 1/100 of the rate
])
def test_d_optimizer_start_first_step_matches_the_formula(start, rate, correction):
    grads, deltas, method = d_update(start)
    checked = 0
    for g, delta in zip(grads, deltas):
        if g is None:
            continue
        expected = -rate * g / ((correction * g * g).sqrt() + 1e-8)
        torch.testing.assert_close(delta, expected, rtol=1e-3, atol=1e-7)  # float32 weights: ~1e-7 ulp
        checked += 1
    assert checked >= 3
    # the encoders follow D's optimiser under the paper's rule
    encoder = {id(p) for e in method.meta.encoders() for p in e.parameters()}
    assert encoder <= {id(p) for group in method.opt_d.param_groups for p in group["params"]}


def test_d_warmup_ramps_to_the_rate_and_resumes_on_the_ramp():
    method = make(d_optimizer_start="warmup", lr_d=1e-3)
    task = make_task()
    method.fit(task, budget(3), NullHooks())
    assert method.opt_d.param_groups[0]["lr"] == pytest.approx(1e-3 * 3 / 100)
    resumed = make(d_optimizer_start="warmup", lr_d=1e-3)
    resumed.load_state_dict(method.state_dict())
    resumed.fit(task, budget(4), NullHooks())
    assert resumed.opt_d.param_groups[0]["lr"] == pytest.approx(1e-3 * 4 / 100)
    straight = make(d_optimizer_start="warmup", lr_d=1e-3)
    straight.fit(task, budget(4), NullHooks())
    assert torch.equal(draw(straight), draw(resumed))
    late = make(d_optimizer_start="warmup", lr_d=1e-3)
    late.step = 150
    assert late._d_learning_rate() == 1e-3


# ---- Algorithm 1: alternating sources --------------------------------------------------------------------------------

def observe(method: MetaCGAN, task: FewShotTask, steps: int) -> tuple[list[str], list[set[int]]]:
    """The logged source of every step, and the classes of the real batch D saw in every step."""
    calls: list[torch.Tensor] = []
    method.D.register_forward_pre_hook(lambda module, args: calls.append(args[1].clone()))
    hooks = NullHooks()
    method.fit(task, budget(steps), hooks)
    assert [r[0] for r in hooks.records] == list(range(steps))
    assert len(calls) == 3 * steps  # D on real, on fake (D update), on fake (G update)
    for i in range(steps):  # fakes carry the real batch's labels in both updates
        assert torch.equal(calls[3 * i], calls[3 * i + 1]) and torch.equal(calls[3 * i], calls[3 * i + 2])
    return [r[2]["batch_source"] for r in hooks.records], [set(calls[3 * i].tolist()) for i in range(steps)]


@pytest.mark.parametrize(("n_c", "expected"), [
    (4, ["base", "novel", "novel", "novel"] * 2),
    (2, ["base", "novel"] * 4),
    (1, ["base"] * 8),
])
def test_n_c_alternates_base_and_novel_batches(n_c, expected):
    """iteration % n_c == 0 → base: one step in n_c draws a base batch; n_c = 1 → base classes only."""
    sources, classes = observe(make(n_c=n_c), make_task(), 8)
    assert sources == expected
    for source, seen in zip(sources, classes):
        assert seen <= (BASE if source == "base" else NOVEL), (source, seen)


def test_task_without_base_classes_uses_the_novel_ones():
    sources, classes = observe(make(n_c=4), make_task(base=False), 4)
    assert sources == ["novel"] * 4 and all(c <= NOVEL for c in classes)


def test_support_sets_seen_by_the_task_encoder():
    """For a batch of class y the task encoder sees only images of class y: all k shots of a novel class, a random
    subset of support_size of a base class (drawn afresh each step)."""
    method, task = make(n_c=2, support_size=3), make_task()
    seen: list[torch.Tensor] = []
    first_block = method.meta.task_encoder.blocks[0]
    first_block.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    method.fit(task, budget(6), NullHooks())
    assert len(seen) == 12  # the D and the G update of each step (same support sets)
    images = (torch.cat([task.base.images, task.novel.images]) * 2 - 1).flatten(1)
    labels = torch.cat([task.base.labels, task.novel.labels]).tolist()

    def identify(batch):  # (class, index of the training image) of every support image
        index = torch.cdist(batch.flatten(1), images).argmin(1).tolist()
        return [(labels[i], i) for i in index]

    subsets: dict[int, set[frozenset[int]]] = {c: set() for c in BASE}
    for step in range(6):
        found = identify(seen[2 * step])
        assert identify(seen[2 * step + 1]) == found
        classes = {c for c, _ in found}
        if step % 2 == 0:  # base
            assert classes <= BASE
            for c in classes:
                members = [i for k, i in found if k == c]
                assert len(members) == len(set(members)) == 3  # 3 of its 4 images, no repeats
                subsets[c].add(frozenset(members))
        else:
            assert classes <= NOVEL
            assert all(sum(k == c for k, _ in found) == 2 for c in classes)  # all k = 2 shots
    assert any(len(s) > 1 for s in subsets.values())  # random subsets, not a fixed choice


# ---- fitting, sampling, state ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "channels"), [(28, 3), (32, 1), (32, 3), (64, 1), (64, 3)])  # 28×28×1: the contract
def test_shapes_finite_losses_and_samples_in_range(size, channels):
    method, hooks = make(size, channels), NullHooks()
    method.fit(make_task(size, channels), budget(2), hooks)
    assert method.step == 2
    for _, losses, info in hooks.records:
        assert {"loss_d", "loss_g", "d_real", "d_fake"} <= set(losses)
        assert all(isinstance(v, float) and math.isfinite(v) for v in losses.values())
        assert info["batch_source"] in ("base", "novel") and info["n_c"] == 4
    x = draw(method)
    assert x.shape == (6, channels, size, size) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and x.std() > 0
    assert method.G.training and method.meta.training  # restored after sampling


def test_sample_respects_labels():
    method = fitted(2)
    a = draw(method, (3, 3, 3, 3), seed=5)
    b = draw(method, (4, 4, 4, 4), seed=5)
    assert not torch.allclose(a, b, atol=1e-4)
    assert not torch.equal(draw(method, (3, 3, 3, 3), seed=6), a)  # and is random within a class
    assert torch.equal(draw(method, (3, 3, 3, 3), seed=5), a)
    base = draw(method, (0, 1, 2), seed=5)  # base classes can be sampled too (their kept support)
    assert base.shape == (3, 1, 28, 28)


def test_samples_depend_on_the_kept_support_images():
    """Sampling conditions on the kept images through θ_j, not only on the label."""
    method = fitted(2)
    before = draw(method, (3, 3, 4, 4), seed=5)
    support = method._support
    swapped = support.labels.clone()
    swapped[support.labels == 3], swapped[support.labels == 4] = 4, 3  # class 3 gets class 4's shots and vice versa
    method.load_state_dict({**method.state_dict(), "support": {"images": support.images, "labels": swapped}})
    after = draw(method, (3, 3, 4, 4), seed=5)
    assert not torch.allclose(before, after, atol=1e-5)


def test_sample_needs_support_and_known_classes():
    with pytest.raises(RuntimeError, match="fit"):
        draw(make())
    method = make(num_classes=6)
    method.fit(make_task(), budget(1), NullHooks())
    with pytest.raises(ValueError, match=r"classes \[5\]"):
        draw(method, (3, 5))
    with pytest.raises(ValueError, match="lie in"):
        draw(method, (6,))


def test_initial_weights_of_the_meta_learner_come_from_the_task_seed():
    tampered, fresh = make(), make()
    with torch.no_grad():
        for p in tampered.meta.parameters():
            p.fill_(0.3)
    torch.manual_seed(99)  # the global RNG plays no part
    tampered.fit(make_task(seed=3), budget(1), NullHooks())
    fresh.fit(make_task(seed=3), budget(1), NullHooks())
    assert torch.equal(draw(tampered), draw(fresh))
    scale = fresh.meta.param_generator.weight.std().item() * math.sqrt(8)
    assert abs(scale - 0.02) < 0.005  # N(0, 0.02/√latent)


def test_the_state_keeps_the_sampling_support():
    """Sampling needs support images (the task encoder's input), so the state carries them: a restored model samples
    without the task."""
    method = fitted(2)
    state = method.state_dict()
    assert state["step"] == 2 and state["method"] == "metacgan"
    assert state["support"]["images"].shape[0] == 4 + 3 * 4  # the 4 novel shots, ≤ support_size per base class
    restored = make()
    restored.load_state_dict(state)  # no fit
    assert torch.equal(restored._support.images, method._support.images)
    assert torch.equal(draw(method, (0, 1, 2, 3, 4)), draw(restored, (0, 1, 2, 3, 4)))


def test_state_of_another_method_is_rejected():
    from methods.cgan import CGAN

    state = CGAN(CGAN.Config(width=8, z_dim=8), (1, 28, 28), NUM_CLASSES).state_dict()
    with pytest.raises(ValueError, match="cgan"):
        make().load_state_dict(state)


@pytest.mark.parametrize("flag", [False, True])
def test_diffaugment_flag_changes_what_the_discriminator_sees(flag):
    task = make_task()
    pool = (torch.cat([task.base.images, task.novel.images]) * 2 - 1).flatten(1)
    method, seen = make(diffaugment=flag), []
    method.D.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    method.fit(task, budget(1), NullHooks())
    is_training_image = (torch.cdist(seen[0].flatten(1), pool).min(dim=1).values < 1e-5).tolist()
    assert all(is_training_image) if not flag else not any(is_training_image)
