"""The GAN baselines (DCGAN, WGAN, WGAN-GP, conditional GAN), their networks and the shared adversarial loop.

The method contract (shapes, finite losses, state round trip, resume, seeding) is checked on every method in
``tests/test_method_contract.py``; this file tests what is particular to these methods. Everything runs on tiny
networks (width 8, z 8), batches of 4 and one to a few steps on the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from harness.api import Budget, FewShotTask, LabeledImages, NullHooks
from methods.adversarial import BatchSampler
from methods.cgan import CGAN
from methods.dcgan import DCGAN
from methods.nets import Discriminator, Generator, OneHotMapConv, dcgan_init
from methods.wgan import WGAN
from methods.wgan_gp import WGANGP

METHODS = [DCGAN, WGAN, WGANGP, CGAN]
NUM_CLASSES = 5  # classes 0-2 base, 3-4 novel
TINY = {"width": 8, "z_dim": 8}


def make_task(conditional: bool, size: int = 28, channels: int = 1, seed: int = 0) -> FewShotTask:
    g = torch.Generator().manual_seed(1234)
    shape = (channels, size, size)
    if conditional:
        base = LabeledImages(torch.rand(12, *shape, generator=g), torch.arange(12) % 3)
        novel = LabeledImages(torch.rand(4, *shape, generator=g), torch.tensor([3, 3, 4, 4]))
        return FewShotTask(base, novel, (0, 1, 2), (3, 4), shape, seed)
    empty = LabeledImages(torch.empty(0, *shape), torch.empty(0, dtype=torch.long))
    novel = LabeledImages(torch.rand(3, *shape, generator=g), torch.full((3,), 4))
    return FewShotTask(empty, novel, (), (4,), shape, seed)


def make(cls, size: int = 28, channels: int = 1, **overrides):
    return cls(cls.Config(**{**TINY, **overrides}), (channels, size, size), NUM_CLASSES, "cpu")


def budget(steps: int) -> Budget:
    return Budget(steps=steps, batch_size=4)


def draw(method, n: int = 6, seed: int = 7) -> torch.Tensor:
    labels = torch.tensor([3, 4] * (n // 2))
    return method.sample(labels, torch.Generator().manual_seed(seed))


# ---- networks --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("num_classes", [0, 4])
def test_network_shapes(size, channels, num_classes):
    G = Generator(8, channels, size, width=4, num_classes=num_classes)
    D = Discriminator(channels, size, width=4, num_classes=num_classes, norm="layer")
    labels = torch.tensor([0, 3, 1]) if num_classes else None
    x = G(torch.randn(3, 8), labels)
    assert x.shape == (3, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x, labels).shape == (3,)


@pytest.mark.parametrize("size", [16, 30, 128])
def test_unsupported_size_raises(size):
    with pytest.raises(ValueError, match="not supported"):
        Generator(8, 1, size)
    with pytest.raises(ValueError, match="not supported"):
        Discriminator(1, size)


def test_conditional_networks_need_labels():
    with pytest.raises(ValueError, match="needs labels"):
        Generator(8, 1, 28, width=4, num_classes=3)(torch.randn(2, 8))


@pytest.mark.parametrize("lookup", [False, True])
def test_discriminator_label_maps_equal_onehot_concatenation(lookup):
    """The label term is exactly a conv over concatenated one-hot maps (Mirza & Osindero-style conditioning), also
    computed per class and looked up (``label_lookup``)."""
    torch.manual_seed(0)
    D = Discriminator(3, 32, width=4, num_classes=6, label_lookup=lookup)
    x, y = torch.randn(5, 3, 32, 32), torch.tensor([0, 5, 2, 2, 1])
    maps = F.one_hot(y, 6).float()[:, :, None, None].expand(-1, -1, 32, 32)
    first = D.blocks[0].conv
    weight = torch.cat([first.weight, D.label_maps.weight], dim=1)
    expected = F.conv2d(torch.cat([x, maps], 1), weight, first.bias, stride=2, padding=1)
    got = first(x) + D.label_maps(y, 32, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_label_lookup_gives_the_per_sample_gradients():
    """The lookup's weight gradient sums the samples of a class, as the per-sample convolution's does."""
    torch.manual_seed(0)
    y = torch.tensor([0, 5, 2, 2, 1, 5, 5])
    grads = []
    for lookup in (False, True):
        maps = OneHotMapConv(6, 4, lookup=lookup)
        with torch.no_grad():
            maps.weight.copy_(torch.arange(maps.weight.numel(), dtype=torch.float32).view_as(maps.weight) / 100)
        out = maps(y, 28, 28)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append(maps.weight.grad)
    assert grads[0].abs().sum() > 0 and grads[1][:, 3].abs().sum() == 0  # class 3 absent: no gradient
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-5)


def test_generator_label_embedding_equals_onehot_concatenation():
    torch.manual_seed(0)
    G = Generator(8, 1, 28, width=4, num_classes=6)
    z, y = torch.randn(5, 8), torch.tensor([0, 5, 2, 2, 1])
    weight = torch.cat([G.stem.linear.weight, G.stem.label_embed.weight.T], dim=1)
    expected = F.linear(torch.cat([z, F.one_hot(y, 6).float()], 1), weight)
    got = G.stem.linear(z) + G.stem.label_embed(y)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_critic_layer_norm_has_no_batch_norm():
    D = Discriminator(1, 28, width=4, norm="layer")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in D.modules())
    # per-sample normalisation: an image's logit does not depend on the rest of the batch
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(D(x)[:2], D(x[:2]))


def test_dcgan_init_statistics_and_reproducibility():
    G1, G2 = Generator(8, 1, 64, width=16), Generator(8, 1, 64, width=16)
    dcgan_init(G1, torch.Generator().manual_seed(3))
    dcgan_init(G2, torch.Generator().manual_seed(3))
    for a, b in zip(G1.state_dict().values(), G2.state_dict().values()):
        assert torch.equal(a, b)
    w = G1.blocks[0].conv.weight
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    bn = G1.blocks[0].norm.weight
    assert abs(bn.mean().item() - 1) < 0.02


def test_generator_block_weight_override():
    """MetaCGAN-style use: one deconvolution's weight replaced for a call."""
    G = Generator(8, 1, 28, width=4)
    block = G.blocks[0]
    h = torch.randn(2, block.conv.in_channels, 7, 7)
    block.eval()
    torch.testing.assert_close(block(h, weight=block.conv.weight), block(h))
    assert not torch.allclose(block(h, weight=torch.zeros_like(block.conv.weight)), block(h))


# ---- configs ---------------------------------------------------------------------------------------------------------

def test_config_defaults_are_the_papers():
    d = DCGAN.Config()
    assert (d.lr_g, d.lr_d, d.beta1, d.beta2, d.z_dim) == (2e-4, 2e-4, 0.5, 0.999, 100)
    w = WGAN.Config()
    assert (w.lr_g, w.lr_d, w.clip, w.n_critic) == (5e-5, 5e-5, 0.01, 5)
    gp = WGANGP.Config()
    assert (gp.lr_g, gp.lr_d, gp.beta1, gp.beta2, gp.gp_lambda, gp.n_critic) == (1e-4, 1e-4, 0.0, 0.9, 10.0, 5)
    assert CGAN.Config().sampling == "pooled" and CGAN.Config().lr_g == 2e-4
    for cls in METHODS:
        c = cls.Config()
        assert c.width == 64 and c.diffaugment is False and c.diffaugment_policy == "color,translation,cutout"
        assert all(f.description for f in cls.Config.model_fields.values()), cls.name


def test_speed_defaults_follow_their_paired_trials():
    """bf16 + channels-last only where a paired trial allowed it: DCGAN (bf16_paired), CGAN (bf16_paired_cgan, with
    the slow-spot settings) and WGAN-GP (bf16_paired_wgan_gp, defaults version 2); WGAN had no trial and stays fp32.
    A suite entry that writes out the old settings keeps its trial id (defaults version 1)."""
    speed = ("precision", "channels_last", "fold_output", "label_lookup", "fused_optimizer")
    assert [tuple(getattr(cls.Config(), f) for f in speed) for cls in METHODS] == [
        ("bf16", True, False, False, False), ("fp32", False, False, False, False),
        ("bf16", True, False, False, False), ("bf16", True, True, True, True)]
    assert WGANGP.defaults_version({}) == 2 and WGANGP.defaults_version({"precision": "fp32"}) == 2
    assert WGANGP.defaults_version({"precision": "fp32", "channels_last": False}) == 1
    assert WGAN.defaults_version({}) == 1
    assert all(f.description for f in WGANGP.Config.model_fields.values())


@pytest.mark.parametrize("cls", METHODS)
def test_config_rejects_unknown_fields_and_policies(cls):
    with pytest.raises(ValidationError):
        cls.Config(learning_rate=1e-3)
    with pytest.raises(ValidationError):
        cls.Config(diffaugment_policy="color,rotate")


def test_wrong_config_type_raises():
    with pytest.raises(TypeError):
        DCGAN(WGAN.Config(), (1, 28, 28), NUM_CLASSES)


def test_names_and_conditioning():
    assert [(m.name, m.conditional) for m in METHODS] == [
        ("dcgan", False), ("wgan", False), ("wgan_gp", False), ("cgan", True)]
    assert all(m.description for m in METHODS)


# ---- fitting ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", METHODS)
@pytest.mark.parametrize(("size", "channels"), [(32, 3), (64, 3)])  # 28×28×1: the contract
def test_other_image_sizes_train_and_sample(cls, size, channels):
    method = make(cls, size, channels)
    hooks = NullHooks()
    method.fit(make_task(cls.conditional, size, channels), budget(1), hooks)
    assert method.step == 1
    assert [r[0] for r in hooks.records] == [0]
    losses = hooks.records[0][1]
    assert {"loss_d", "loss_g"} <= set(losses)
    assert all(isinstance(v, float) and math.isfinite(v) for v in losses.values())
    x = draw(method, 6)
    assert x.shape == (6, channels, size, size) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    assert x.std() > 0


@pytest.mark.parametrize("cls", METHODS)
def test_initial_weights_come_from_the_task_seed(cls):
    """fit() at step 0 draws the weights from task.seed: whatever they were before, and different per seed."""
    task = make_task(cls.conditional, seed=3)
    tampered = make(cls)
    with torch.no_grad():
        for p in tampered.G.parameters():
            p.fill_(0.5)
    torch.manual_seed(99)  # the global RNG plays no part
    fresh = make(cls)
    tampered.fit(task, budget(1), NullHooks())
    fresh.fit(task, budget(1), NullHooks())
    assert torch.equal(draw(tampered), draw(fresh))

    # with a negligible learning rate the weights after one step are the initial ones
    tiny_lr = {"lr_g": 1e-12, "lr_d": 1e-12}
    a, b = make(cls, **tiny_lr), make(cls, **tiny_lr)
    a.fit(make_task(cls.conditional, seed=0), budget(1), NullHooks())
    b.fit(make_task(cls.conditional, seed=1), budget(1), NullHooks())
    wa, wb = a.G.to_image.weight, b.G.to_image.weight
    assert (wa - wb).abs().max() > 1e-3
    assert abs(wa.std().item() - 0.02) < 0.01


def test_state_dict_of_another_method_is_rejected():
    state = make(DCGAN).state_dict()
    with pytest.raises(ValueError, match="dcgan"):
        make(WGAN).load_state_dict(state)


@pytest.mark.parametrize("cls", METHODS)
def test_every_step_reports_the_training_pool(cls):
    """The info of every step says what the model trains on (an unconditional one: one class's shots only)."""
    method, hooks = make(cls), NullHooks()
    method.fit(make_task(cls.conditional), budget(3), hooks)
    expected = ({"pool_images": 16, "novel_images": 4, "pool_classes": 5, "sampling": "pooled"} if cls.conditional
                else {"pool_images": 3, "novel_images": 3, "pool_classes": 1, "sampling": "novel_shots"})
    assert [step for step, _, _ in hooks.records] == [0, 1, 2]
    for _, _, info in hooks.records:
        assert info == {**expected, "n_critic": method.n_critic}


def test_unconditional_trains_on_one_novel_class_only():
    with pytest.raises(ValueError, match="one novel class"):
        make(DCGAN).fit(make_task(True), budget(1), NullHooks())


def test_task_of_other_image_shape_is_rejected():
    with pytest.raises(ValueError, match="built for"):
        make(DCGAN, 32).fit(make_task(False, 28), budget(1), NullHooks())


# ---- method-specific -------------------------------------------------------------------------------------------------

def test_dcgan_losses_are_bce_with_the_non_saturating_generator_loss():
    method = make(DCGAN)
    zero = torch.zeros(4)
    assert method.d_loss(zero, zero, None, None, None).item() == pytest.approx(2 * math.log(2))
    assert method.g_loss(zero).item() == pytest.approx(math.log(2))
    confident_real = torch.full((4,), 10.0)
    assert method.d_loss(confident_real, -confident_real, None, None, None).item() < 1e-3
    # non-saturating: when D rejects the fakes (logit -10) the generator still gets a gradient of ~1 per logit
    logits = torch.full((4,), -10.0, requires_grad=True)
    method.g_loss(logits).backward()
    assert torch.allclose(logits.grad, torch.full((4,), -0.25), atol=1e-3)


@pytest.mark.parametrize("cls", [WGAN, WGANGP])
def test_wasserstein_losses(cls):
    method = make(cls)
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0])
    assert method.d_loss(real, fake, None, None, None).item() == pytest.approx(-0.5 - 2.0)
    assert method.g_loss(fake).item() == pytest.approx(0.5)


def test_wgan_clips_critic_weights():
    method = make(WGAN, clip=0.01)
    method.fit(make_task(False), budget(1), NullHooks())
    top = max(p.abs().max().item() for p in method.D.parameters())
    # batch-norm weights start near 1, so without clipping the maximum would be far above c
    assert top == pytest.approx(0.01)


def test_wgan_gp_penalty_positive_finite_and_logged():
    method = make(WGANGP)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in method.D.modules())
    hooks = NullHooks()
    method.fit(make_task(False), budget(1), hooks)
    gp = hooks.records[0][1]["gp"]
    assert math.isfinite(gp) and gp > 0
    real, fake = torch.rand(4, 1, 28, 28) * 2 - 1, torch.rand(4, 1, 28, 28) * 2 - 1
    penalty = method.gradient_penalty(real, fake)
    assert torch.isfinite(penalty) and penalty > 0
    penalty.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.D.parameters())


def test_wgan_gp_penalty_is_zero_for_a_unit_gradient_critic():
    """D(x) = <w, x> with ‖w‖ = 1 has gradient norm 1 everywhere: the penalty vanishes."""
    method = make(WGANGP)
    direction = torch.randn(28 * 28)
    direction /= direction.norm()

    class Linear(torch.nn.Module):
        def forward(self, x, labels=None):
            return x.flatten(1) @ direction

    method.D = Linear()
    penalty = method.gradient_penalty(torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28))
    assert penalty.item() == pytest.approx(0.0, abs=1e-6)


def test_cgan_output_depends_on_label():
    method = make(CGAN)
    method.fit(make_task(True), budget(1), NullHooks())
    a = method.sample(torch.full((4,), 3), torch.Generator().manual_seed(5))
    b = method.sample(torch.full((4,), 4), torch.Generator().manual_seed(5))
    assert not torch.allclose(a, b, atol=1e-4)
    # and the discriminator's verdict depends on the label too
    x = torch.rand(4, 1, 28, 28)
    assert not torch.allclose(method.D(x, torch.full((4,), 0)), method.D(x, torch.full((4,), 4)))


def test_cgan_rejects_out_of_range_labels_and_needs_classes():
    method = make(CGAN)
    with pytest.raises(ValueError, match="labels"):
        method.sample(torch.tensor([NUM_CLASSES]), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="num_classes"):
        CGAN(CGAN.Config(**TINY), (1, 28, 28), 0)


def test_unconditional_sample_ignores_label_values():
    method = make(DCGAN)
    method.fit(make_task(False), budget(1), NullHooks())
    a = method.sample(torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(5))
    b = method.sample(torch.full((4,), 4), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_sample_is_independent_of_batch_composition():
    """Eval-mode batch norm: an image depends on its own noise only, so a prefix of the noise gives a prefix."""
    method = make(DCGAN)
    method.fit(make_task(False), budget(2), NullHooks())
    full = method.sample(torch.zeros(6, dtype=torch.long), torch.Generator().manual_seed(9))
    assert method.G.training  # restored after sampling
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(9))
    method.G.eval()
    first = (method.G(z[:2]) + 1) / 2
    torch.testing.assert_close(full[:2], first.clamp(0, 1))


def test_batch_sampler_pooled_versus_class_balanced():
    labels = torch.cat([torch.zeros(98, dtype=torch.long), torch.ones(2, dtype=torch.long)])
    images = torch.arange(100, dtype=torch.float32).view(100, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    pooled = BatchSampler(images, labels, "uniform").draw_labels(4000, g).float().mean().item()
    balanced_sampler = BatchSampler(images, labels, "class_balanced")
    x, y = balanced_sampler.draw(4000, g)
    assert pooled == pytest.approx(0.02, abs=0.01)
    assert y.float().mean().item() == pytest.approx(0.5, abs=0.04)
    # images keep their labels (image value i has label 1 iff i >= 98) and every image can be drawn
    assert torch.equal(y, (x.flatten() >= 98).long())
    assert set(x.flatten().long().tolist()) == set(range(100))


def test_cgan_class_balanced_sampling_is_used():
    method, hooks = make(CGAN, sampling="class_balanced"), NullHooks()
    method.fit(make_task(True), budget(1), hooks)
    assert method.sampling_mode() == "class_balanced"
    assert hooks.records[0][2]["sampling"] == "class_balanced"


@pytest.mark.parametrize("cls", METHODS)
def test_diffaugment_flag_changes_what_the_discriminator_sees(cls):
    """With the flag off, D's real inputs are training images (in [-1, 1]); with it on they are not."""
    task = make_task(cls.conditional)
    pool = torch.cat([task.base.images, task.novel.images]) if cls.conditional else task.novel.images
    pool = (pool * 2 - 1).flatten(1)
    for flag in (False, True):
        method, seen = make(cls, diffaugment=flag), []
        method.D.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
        method.fit(task, budget(1), NullHooks())
        real = seen[0].flatten(1)  # the first discriminator call of a step is on the real batch
        is_training_image = (torch.cdist(real, pool).min(dim=1).values < 1e-5).tolist()
        assert all(is_training_image) if not flag else not any(is_training_image)
