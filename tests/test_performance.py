"""The speed settings of methods.performance: each trains and samples, is recorded in the config, and keeps what it
claims (channels-last starts from the same weights; bf16 autocast sees in-place updates; defaults change nothing).

Tiny networks (width 4-8), batches of 4, one or two steps.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.api import Budget, FewShotTask, LabeledImages, NullHooks
from methods.cgan import CGAN
from methods.dcgan import DCGAN
from methods.glico import GLICO
from methods.metacgan import MetaCGAN
from methods.nets import Discriminator, Generator, conv_transpose2d_by_fold
from methods.performance import PerformanceConfig, autocast, prepare_optimizer
from methods.wgan import WGAN
from methods.wgan_gp import WGANGP

NUM_CLASSES = 5
TINY = {
    DCGAN: {"width": 8, "z_dim": 8},
    WGAN: {"width": 8, "z_dim": 8},
    WGANGP: {"width": 8, "z_dim": 8},
    CGAN: {"width": 8, "z_dim": 8},
    MetaCGAN: {"width": 8, "z_dim": 8, "latent_dim": 4},
    GLICO: {"code_dim": 16, "noise_dim": 8, "hidden": 32, "width": 4, "classifier_width": 4,
            "base_classifier_width": 4, "base_classifier_steps": 2},
}


def make_task(conditional: bool, channels: int = 3) -> FewShotTask:
    g = torch.Generator().manual_seed(0)
    shape = (channels, 28, 28)
    novel = LabeledImages(torch.rand(4, *shape, generator=g), torch.tensor([3, 3, 4, 4]))
    if not conditional:
        empty = LabeledImages(torch.empty(0, *shape), torch.empty(0, dtype=torch.long))
        return FewShotTask(empty, novel.of_class(4), (), (4,), shape, 0)
    base = LabeledImages(torch.rand(12, *shape, generator=g), torch.arange(12) % 3)
    return FewShotTask(base, novel, (0, 1, 2), (3, 4), shape, 0)


def make(cls, channels: int = 3, **options):
    return cls(cls.Config(**TINY[cls], **options), (channels, 28, 28), NUM_CLASSES, "cpu")


def fit(method, steps: int = 2) -> NullHooks:
    hooks = NullHooks()
    method.fit(make_task(method.conditional), Budget(steps=steps, batch_size=4, log_every=1), hooks)
    return hooks


@pytest.mark.parametrize("cls", [DCGAN, WGANGP, CGAN, MetaCGAN, GLICO])
@pytest.mark.parametrize("options", [{"precision": "bf16"}, {"channels_last": True},
                                     {"precision": "bf16", "channels_last": True, "fused_optimizer": True}])
def test_speed_settings_train_and_sample(cls, options):
    method = make(cls, **options)
    hooks = fit(method)
    assert [step for step, _, _ in hooks.records] == [0, 1]
    for _, losses, _ in hooks.records:
        assert losses and all(math.isfinite(v) for v in losses.values()), losses
    labels = torch.tensor([3, 4, 3]) if method.conditional else torch.tensor([4, 4, 4])
    images = method.sample(labels, torch.Generator().manual_seed(1))
    assert images.shape == (3, 3, 28, 28) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    recorded = method.config.model_dump(mode="json")  # what a trial stores as provenance["method_config"]
    assert {k: recorded[k] for k in options} == options


def test_bf16_runs_the_step_in_bfloat16_with_float32_losses():
    runs = {p: fit(make(CGAN, precision=p), steps=1).records[0][1] for p in ("fp32", "bf16")}
    assert runs["fp32"] != runs["bf16"]  # the setting reaches the step
    D = Discriminator(3, 28, width=4, num_classes=2)
    with autocast(PerformanceConfig(precision="bf16"), torch.device("cpu")):
        logits = D(torch.rand(2, 3, 28, 28), torch.tensor([0, 1]))
        assert D.blocks[0].conv(torch.rand(2, 3, 28, 28)).dtype == torch.bfloat16
    assert logits.dtype == torch.float32


def test_bf16_autocast_sees_weights_updated_inside_it():
    """A step's optimiser updates run inside the autocast region (e.g. n_critic critic updates): the next forward must
    use the new weights, not autocast's cached bfloat16 copy of the old ones."""
    lin = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    x = torch.randn(2, 4)
    with autocast(PerformanceConfig(precision="bf16"), torch.device("cpu")):
        before = lin(x)
        before.float().sum().backward()
        opt.step()
        after = lin(x)
    assert not torch.allclose(before.float(), after.float())
    torch.testing.assert_close(after.float(), lin(x), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("cls", [CGAN, MetaCGAN])
def test_channels_last_starts_from_the_same_weights(cls):
    """fit draws the initial weights from the task seed; random draws follow the storage order, so without care a
    channels-last network would start elsewhere."""
    default, cl = make(cls, channels_last=False), make(cls, channels_last=True)
    assert cl.D.blocks[1].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not default.D.blocks[1].conv.weight.is_contiguous(memory_format=torch.channels_last)
    for method in (default, cl):
        method._init_weights(torch.Generator().manual_seed(3))
    for net_a, net_b in zip(default.networks(), cl.networks()):
        for (key, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
            assert torch.equal(a, b), key


def test_glico_channels_last_starts_from_the_same_generator():
    default, cl = make(GLICO, channels_last=False), make(GLICO, channels_last=True)
    assert cl.G.convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    for (key, a), b in zip(default.G.state_dict().items(), cl.G.state_dict().values()):
        assert torch.equal(a, b), key


def test_fused_optimizer_rebuilds_with_the_same_settings():
    default = PerformanceConfig()
    fused = PerformanceConfig(fused_optimizer=True)
    params = [torch.nn.Parameter(torch.randn(3))]
    adam = torch.optim.Adam(params, lr=0.01, betas=(0.5, 0.9))
    assert prepare_optimizer(adam, default) is adam
    rebuilt = prepare_optimizer(adam, fused)
    assert type(rebuilt) is torch.optim.Adam and rebuilt.param_groups[0]["fused"] is True
    assert rebuilt.param_groups[0]["params"][0] is params[0]
    assert (rebuilt.param_groups[0]["lr"], rebuilt.param_groups[0]["betas"]) == (0.01, (0.5, 0.9))
    rms = prepare_optimizer(torch.optim.RMSprop(params, lr=0.02), fused)  # no fused RMSprop: foreach
    assert rms.param_groups[0]["foreach"] is True and rms.param_groups[0]["lr"] == 0.02
    method = make(MetaCGAN, fused_optimizer=True)
    assert method.opt_g.param_groups[0]["fused"] is True and method.opt_d.param_groups[0]["foreach"] is True


def test_defaults_leave_the_step_unchanged():
    """With the defaults the training step is the reference fp32 path: no autocast, the method's own optimisers,
    contiguous weights; two fits of the same seed are bit-identical."""
    config = PerformanceConfig()
    assert not torch.is_autocast_enabled("cpu")
    with autocast(config, torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    states = []
    for _ in range(2):
        method = make(WGAN)  # still on PerformanceConfig's defaults (WGAN-GP's moved to bf16 + channels-last)
        # WGAN's RMSprop (the paper's) exactly as built, neither fused nor foreach
        assert type(method.opt_g) is torch.optim.RMSprop and method.opt_g.param_groups[0]["foreach"] is None
        fit(method)
        states.append(method.G.state_dict())
    for (key, a), b in zip(states[0].items(), states[1].values()):
        assert torch.equal(a, b), key


def test_compile_is_refused_with_the_gradient_penalty():
    with pytest.raises(ValueError, match="double backward"):
        WGANGP.Config(compile=True)
    assert CGAN.Config(compile=True).compile


def _deconv_case(per_sample: bool, channels_last: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, 7, 7, generator=g, requires_grad=True)
    shape = (5, 6, 3, 4, 4) if per_sample else (6, 3, 4, 4)
    weight = torch.randn(*shape, generator=g, requires_grad=True)
    bias = torch.randn(3, generator=g, requires_grad=True)
    x_in = x.to(memory_format=torch.channels_last) if channels_last else x
    return x, x_in, weight, bias


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fold_output_equals_the_transposed_convolution(per_sample, channels_last):
    """``fold_output``'s product + F.fold against PyTorch's own transposed convolution (a per-sample weight: one
    call per sample), values and gradients of input, weight and bias."""
    x, x_in, weight, bias = _deconv_case(per_sample, channels_last)
    got = conv_transpose2d_by_fold(x_in, weight, bias, stride=2, padding=1)
    if per_sample:
        expected = torch.cat([F.conv_transpose2d(x[i:i + 1], weight[i], bias, stride=2, padding=1)
                              for i in range(len(x))])
    else:
        expected = F.conv_transpose2d(x, weight, bias, stride=2, padding=1)
    assert got.shape == expected.shape == (5, 3, 14, 14)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    grads = [torch.autograd.grad((out * upstream).sum(), (x, weight, bias)) for out in (got, expected)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_fold_output_in_bf16_sums_the_patches_in_float32():
    x, _, weight, bias = _deconv_case(False, False)
    with autocast(PerformanceConfig(precision="bf16"), torch.device("cpu")):
        got = conv_transpose2d_by_fold(x, weight, bias)
    assert got.dtype == torch.float32
    expected = F.conv_transpose2d(x, weight, bias, stride=2, padding=1)
    torch.testing.assert_close(got, expected, atol=0.1, rtol=0.02)  # bfloat16 products, 8 mantissa bits


@pytest.mark.parametrize("cls", [CGAN, MetaCGAN, GLICO])
def test_fold_output_and_label_lookup_train_like_the_default_path(cls):
    """The same first step as the default formulation, up to rounding: the settings change kernels, not the model
    (MetaCGAN generates its output layer's weights per sample, GLICO's generator has its own output layer)."""
    extra = {"label_lookup": True} if cls is not GLICO else {}
    runs = [fit(make(cls, precision="fp32", channels_last=False, **options), steps=1).records[0][1]
            for options in ({}, {"fold_output": True, **extra})]
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert math.isclose(runs[0][key], runs[1][key], rel_tol=1e-4, abs_tol=1e-5), (key, runs)


def test_fold_output_generator_samples_like_the_default():
    torch.manual_seed(0)
    default, folded = Generator(8, 1, 28, width=4, num_classes=3), Generator(8, 1, 28, width=4, num_classes=3,
                                                                            fold_output=True)
    folded.load_state_dict(default.state_dict())
    z, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(folded.eval()(z, y), default.eval()(z, y), atol=1e-5, rtol=1e-5)
