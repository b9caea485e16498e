"""GLICO (Azuri & Weinshall, ICPR 2020, "Generative Latent Implicit Conditional Optimization when Learning from Small
Sample", arXiv 2003.14297; official code: github.com/IdanAzuri/glico-learning-small-sample, ``glico_model/``).

GLICO is a GLO-style generator (no discriminator): every training image ``x_i`` owns a learnable latent code ``z_i`` on
the unit sphere; the codes and a generator ``G`` are learnt jointly so that ``G([z_i, ε])`` reconstructs ``x_i`` under a
perceptual loss, while a classifier trained on the reconstructions pushes the codes of a class to generate images of
that class. New images of class ``c`` come from spherical interpolation between two codes of class ``c``.

What this module implements, and where it follows or leaves the official code:

* **Latent codes** (official ``_netZ``): one row of a ``code_dim`` (512) table per training image, initialised
  N(0, 0.01²) and projected back onto the unit sphere after every optimisation step (``get_norm``); the generator
  normalises its input too (with a detached norm, as ``_netG.forward``). **Inductive only**: codes exist for the task's
  novel shots (and its base images if ``use_base``) and nothing else; the official ``--tr`` (transductive) mode, which
  also learns codes for the unlabelled and *test* images, is not reproduced — the held-out images never reach ``fit``.
* **Noise code**: ``ε ~ N(0, noise_std²)`` of ``noise_dim`` (100, std 0.15: official ``code_size`` and
  ``normal_(0, 0.15)``) concatenated to the normalised code, optionally through ``Linear(bias=False)`` + LeakyReLU(0.2)
  (official ``--noise_proj``). The official generators (CIFAR ``_netG``, CUB ``DCGAN_G``, STL ``DCGAN_G_small``) take
  ε only with ``--noise_proj`` (``nag_trainer`` passes the flag as both their ``noise`` and ``noise_projection``
  arguments), so the official default generator gets no ε at all: ``noise_input = "official"`` reproduces that tie;
  the default ``"concat"`` always concatenates ε (raw, or projected with ``noise_proj``) unless ``noise_dim = 0``.
* **Generator** (official CIFAR ``_netG``): ``Linear(code+noise → 1024) → LeakyReLU(0.2) → Linear(→ 2w·s·s) →
  LeakyReLU → ConvTranspose(4, 2, 1) ... → sigmoid``, all weights Xavier-normal with gain √2, no batch norm (it is
  commented out in the official code). 28×28 and 32×32 start at ``s = size/4`` with two transposed convolutions, exactly
  the official shape for ``width = 64`` (128 channels at ``s×s``, then 64, then the image); 64×64 starts at 8×8 with
  three (256 → 128 → 64 → image for ``width = 64``) rather than the official formula's 16×16 start, whose first linear
  layer would hold 33 M weights. ``width`` scales the channels (CPU cost).
* **Reconstruction loss** (official ``_VGGDistance``): per image, the mean absolute pixel error plus, per perceptual
  level, the mean absolute error between features of ``G([z_i, ε])`` and of ``x_i``, both images scaled to [-1, 1];
  averaged over the batch. The perceptual network is frozen and the training images are fixed, so their features are
  computed once per ``fit`` when they fit in 256 MiB (the few-shot case), else per batch. Perceptual network,
  ``perceptual``:

  - ``vgg16``: torchvision's ImageNet VGG-16 (file ``vgg16-397923af.pth``, read from the torch hub cache
    ``torch.hub.get_dir()/checkpoints/`` or the path ``vgg16_weights``; **never downloaded**: a missing file raises
    :class:`FileNotFoundError` naming the path when the method is constructed). Taps as the official ``layer_ids
    [2, 7, 12, 21, 30]`` with 2 levels for 16 px, 3 for 28 and 32 px, 4 for 64 px (``distance_metric``). The official
    network's in-place ReLU overwrites every tapped convolution output but the last, so the taps are effectively
    relu1_2, relu2_2, conv3_2 (32 px); this module reproduces that. Inputs in [-1, 1] **without** ImageNet mean/std,
    as the official code feeds ``2·I − 1`` straight into VGG (``vgg_imagenet_norm`` switches ImageNet normalisation on);
    grayscale images are repeated to 3 channels. Frozen: eval mode, no parameter gradients.
  - ``base_classifier`` (default; works offline, e.g. for MNIST-like data where ImageNet features are a poor fit and
    the weights file may be absent): a small CNN (:class:`SmallCNN`, the official ``cnn`` architecture: four blocks of
    3×3 conv → BN → LeakyReLU(0.1) → 2×2 max-pool and a linear head) trained inside ``fit`` on the **base classes
    only** (legal in the few-shot protocol: the base classes are given in full; the novel shots never reach it) for
    ``base_classifier_steps`` Adam steps (lr ``base_classifier_lr``) on uniformly drawn batches of
    ``min(batch_size, #base images)``, then frozen (eval mode, no gradients); the outputs of its first
    ``perceptual_levels`` blocks (after the activation, before pooling) are the features. This training does not count
    towards ``budget.steps``; it happens once, when ``fit`` starts at step 0, its final batch loss and accuracy are in
    the logged ``info``, and its weights are part of ``state_dict``. The harness evaluator is never used.
  - ``pixel``: pixel L1 only (ablation).

* **Classification loss**: a classifier (the same small CNN architecture, over the classes the codes cover) is trained
  jointly on the reconstructions ``G([z_i, ε])``; cross-entropy on its **logits** (the official ``cnn`` ends in a
  softmax that ``CrossEntropyLoss`` softmaxes again: not copied), weight ``gamma`` (0.5, official ``--gamma``). Its
  batch norm is off by default (``classifier_batch_norm``): the generator's initial outputs are nearly constant
  (pixel std ≈ 0.003), train-mode batch norm divides by that tiny deviation, and the resulting huge classification
  gradients inflate the generator's Adam second moments so that reconstruction stalls for hundreds of steps (measured
  on 8 images: no progress in 100 steps with it, reconstruction L1 0.86 → 0.03 without it). The total loss
  ``rec + gamma·CE`` is back-propagated into the codes, the generator and the classifier. Classifier optimiser: SGD
  with the official momentum 0.9 and weight decay 1e-4 but lr 0.01 instead of 0.1 (0.1 needs the batch norm: without
  it the classifier diverged to NaN within 130 steps); the official also puts the codes in this optimiser with lr 1e-3
  and re-creates a per-batch MultiStepLR every epoch (milestones 60, 120, 160 batches, which a few-shot epoch never
  reaches): neither is copied. (Re-creating the Adam optimisers every epoch, as ``schedule = "official"`` does, also
  wipes the inflated second moments; that is probably why the stall goes unnoticed there.) ``gamma = 0`` drops the
  classifier (GLICO without classification, a GLO with perceptual loss).
* **Optimisation**: Adam for the codes (lr 1e-3, official ``--lr``) and the generator (0.7·1e-3, official
  ``--factor 0.7``), betas (0.5, 0.999). ``schedule``:

  - ``official`` (default; ``nag_trainer.NAG.train_long``): at the start of every epoch the optimisers are created
    anew — both Adams and the classifier's SGD, so their moments and momentum start from zero each epoch — with the
    rates ``lr · 0.5^(epoch // 70)`` (``--decay 70``, ``decay_rate=0.5``). The official run is 202 epochs
    (``--epoch 202``): give the budget in epochs, ``budget: {epochs: 202}`` (the default suites' ``glico`` entries
    do); with a step budget the same handling runs for ``budget.steps`` steps.
  - ``long`` (this module's schedule before the official one, kept as a variant): one optimiser state for the whole
    fit and no decay (unless ``lr_decay_epochs`` is set), ``budget.steps`` steps (or ``budget.epochs`` epochs).

  ``lr_decay_epochs`` / ``lr_decay_rate`` override the schedule's decay under either.
* **Steps and epochs**: one *step* is one optimisation step on one batch. Batches (``sampling = "epochs"``, default)
  walk through random permutations of the training images like the official shuffled ``DataLoader``: a batch is the
  next ``batch_size`` images of the current permutation (the last batch of an epoch may be smaller), so one of the
  paper's epochs is ``ceil(N / batch_size)`` steps (N = number of codes; ``steps_per_epoch``, by which the harness
  turns ``budget.epochs`` into steps); with a few-shot set smaller than the batch every step is one epoch over all N
  images, so under ``official`` (fresh optimisers every epoch, as the official loop builds them) every update is
  Adam's first: lr · g / (|g| + eps) per coordinate, about lr · sign(g), whatever the gradient's size.
  ``sampling = "class_balanced"`` (for ``use_base``) draws a class uniformly, then one of its images, with
  replacement (an epoch is still ``ceil(N / batch_size)`` steps).
* **Sampling** (official ``evaluation.calc_output``): for class ``c``, two codes of class ``c`` (distinct when the class
  has at least two; the official partner is drawn from the whole class and may be the code itself),
  ``slerp(z_a, z_b, t)`` with ``t`` uniform in ``slerp_t`` = {0.1, 0.2, 0.3, 0.4} (official ``linspace(0.1, 0.4, 4)``;
  ``slerp_t: [0.5]`` samples the midpoints instead: the ``glico-midpoint`` entry of the MNIST suites), a fresh ε,
  then ``G``. ``interpolation = "lerp"`` (official ``is_lerp``) interpolates linearly and re-normalises.
* **use_base** (default ``False``): the paper learns from the small labelled sample only, so by default codes are
  learnt for the novel shots only; the base classes still serve the ``base_classifier`` perceptual network. With
  ``use_base`` the base images get codes too (one model, joint classifier over base and novel classes); the code table
  then holds every base image (memory ``N × code_dim`` floats and a dense Adam update of the whole table per step, as
  the official ``nn.Embedding`` with Adam).

Randomness (initial weights, codes, batches, noise, base-classifier batches) comes from one ``torch.Generator`` seeded
with ``task.seed`` when ``fit`` starts at step 0; its state is in ``state_dict`` with everything else needed to resume
(codes, networks, optimisers, permutation position, step counter).

Cost, measured on the 2-core development CPU with ``torch.set_num_threads(1)`` (torch 2.14, float32, 28×28×1, batch 64,
best of 6 windows of 10 steps), on a machine shared with other jobs (load average 7-10 on 2 cores, so absolute numbers
are inflated: DCGAN at width 64 took 180 ms per step in the same run against the 46 ms quoted in ``methods.nets``):
default GLICO (``width = 32``, ``classifier_width = 32``, ``base_classifier`` perceptual) 125 ms per step, i.e. 0.7×
a DCGAN step; ``perceptual = "pixel"`` 70 ms; ``width = 64`` 154 ms; the official widths (generator, classifier and
perceptual CNN all 64) 274 ms. The one-off ``base_classifier_steps = 500`` pre-training took 37 s in that run. Time
goes to the small CNNs' convolutions and max-pooling, the generator's 1024 → 2w·s² linear layer and, without the fused
Adam used here, the Adam update of that layer. ``vgg16`` at 32×32 runs VGG's convolutions at full resolution: meant for
a GPU.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Literal

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.api import Budget, FewShotTask, FitHooks, GenerativeMethod, LabeledImages, TrialDiverged
from methods.nets import deconvolve
from methods.performance import (
    PerformanceConfig, autocast, channels_last_field, fill_contiguous, precision_field, prepare_networks,
    prepare_optimizer,
)
from methods.state import check_state_header, state_header

__all__ = [
    "GLICO",
    "GLICOConfig",
    "GlicoGenerator",
    "SmallCNN",
    "VGG16Features",
    "VGG16_WEIGHTS_FILE",
    "default_vgg16_path",
    "lerp_normalised",
    "load_vgg16_features",
    "slerp",
]

SAMPLE_CHUNK = 256  # images per generator forward in sample()
FEATURE_CACHE_BYTES = 256 * 2**20  # perceptual features of the training images are cached when they fit in this
VGG16_WEIGHTS_FILE = "vgg16-397923af.pth"  # torchvision's ImageNet VGG-16 (models.VGG16_Weights.IMAGENET1K_V1)
VGG16_LAYER_IDS = (2, 7, 12, 21, 30)  # official vgg_metric._netVGGFeatures.layer_ids
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# image size -> (side of the generator's first feature map, number of ×2 transposed convolutions)
_GENERATOR_PLAN = {28: (7, 2), 32: (8, 2), 64: (8, 3)}
SUPPORTED_SIZES = tuple(sorted(_GENERATOR_PLAN))
OFFICIAL_EPOCHS = 202  # train_glico.py --epoch 202: the official run length, as budget.epochs
OFFICIAL_DECAY_EPOCHS = 70  # train_glico.py --decay 70: the official schedule halves the rates this often


# ---- configuration ---------------------------------------------------------------------------------------------------

class GLICOConfig(PerformanceConfig):
    """GLICO's settings; defaults are the official code's (``train_glico.py``, ``nag_trainer.py``, ``model.py``,
    ``evaluation.py``) unless stated. The speed settings (``precision``, ``channels_last``, ``compile``,
    ``fused_optimizer``: :mod:`methods.performance`) apply to the training steps; the base classifier's pre-training
    keeps the default arithmetic (its layout and compilation follow the settings)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    # bf16 + channels-last since defaults version 3: tied with fp32 on 12 (split, seed) pairs (reports/bf16_paired)
    precision: Literal["fp32", "bf16"] = precision_field("bf16")
    channels_last: bool = channels_last_field(True)
    code_dim: int = pydantic.Field(512, ge=1, description="latent code dimension per image (official --dim 512)")
    noise_dim: int = pydantic.Field(
        100, ge=0, description="dimension of the noise code ε concatenated to the latent code (official code_size "
        "100); 0 = no noise code (the official CIFAR generator without --noise_proj)"
    )
    noise_std: float = pydantic.Field(0.15, ge=0, description="standard deviation of ε (official normal_(0, 0.15))")
    noise_proj: bool = pydantic.Field(
        False, description="pass ε through a bias-free Linear + LeakyReLU(0.2) before concatenation (official "
        "--noise_proj, off by default)"
    )
    noise_input: Literal["concat", "official"] = pydantic.Field(
        "concat", description="concat: ε is always an input of the generator (unless noise_dim = 0); official: as the "
        "official generators, which take ε only with --noise_proj: without noise_proj the generator gets no ε"
    )
    hidden: int = pydantic.Field(1024, ge=1, description="width of the generator's first linear layer (official 1024)")
    width: int = pydantic.Field(
        32, ge=1, description="generator channels next to the image, doubling per ×2 up-sampling (official 64, i.e. "
        "128 → 64 → image at 32 px); default 32 to keep the CPU cost sane (about 20% cheaper per step at 28 px)"
    )
    lr_codes: float = pydantic.Field(
        1e-3, gt=0, description="Adam learning rate of the latent codes (official --lr 1e-3)"
    )
    lr_g: float = pydantic.Field(
        7e-4, gt=0, description="Adam learning rate of the generator (official --factor 0.7 × --lr 1e-3)"
    )
    betas: tuple[float, float] = pydantic.Field(
        (0.5, 0.999), description="Adam betas of codes and generator (official (0.5, 0.999))"
    )
    schedule: Literal["official", "long"] = pydantic.Field(
        "official", description="official: Adam (and the classifier's SGD) created anew every epoch, rates halved "
        "every 70 epochs (official train_long; run it with budget.epochs = 202, the official --epoch); long: one "
        "optimiser state for the whole fit, no decay (the earlier default, for budget.steps steps)"
    )
    lr_decay_epochs: int | None = pydantic.Field(
        None, ge=0, description="multiply lr_codes and lr_g by lr_decay_rate every this many epochs (one epoch = "
        "ceil(N / batch_size) steps); 0 = never; None = the schedule's: 70 under official (--decay 70), never "
        "under long"
    )
    lr_decay_rate: float = pydantic.Field(0.5, gt=0, le=1, description="the decay factor (official 0.5)")
    gamma: float = pydantic.Field(
        0.5, ge=0, description="weight of the classification loss (official --gamma 0.5); 0 = no classifier"
    )
    classifier_width: int = pydantic.Field(
        32, ge=1, description="channels of the joint classifier's conv blocks (official cnn dim 64; 32 for CPU cost)"
    )
    classifier_batch_norm: bool = pydantic.Field(
        False, description="batch norm in the joint classifier's blocks (official cnn: yes). Off by default: on the "
        "generator's nearly constant initial outputs batch norm divides by a tiny batch deviation, the classification "
        "gradient reaching the generator is huge, and Adam's second moment then stalls the generator for hundreds of "
        "steps"
    )
    lr_classifier: float = pydantic.Field(
        0.01, gt=0, description="SGD learning rate of the joint classifier (official optimizerD: 0.1, with batch norm; "
        "without batch norm 0.1 diverged to NaN within 130 steps in tests at width 64, so 0.01)"
    )
    classifier_momentum: float = pydantic.Field(0.9, ge=0, lt=1, description="SGD momentum (official 0.9)")
    classifier_weight_decay: float = pydantic.Field(1e-4, ge=0, description="SGD weight decay (official 1e-4)")
    perceptual: Literal["vgg16", "base_classifier", "pixel"] = pydantic.Field(
        "base_classifier", description="features of the reconstruction loss: vgg16 (official; needs the ImageNet "
        "weights file, never downloaded), base_classifier (a CNN trained in fit on the base classes only; the "
        "offline default, suited to MNIST-like data) or pixel (pixel L1 only, ablation)"
    )
    perceptual_levels: int | None = pydantic.Field(
        None, ge=1, le=5, description="feature levels in the perceptual loss; None = official choice by image size "
        "(16 px: 2, 28/32 px: 3, 64 px: 4); base_classifier has at most 4"
    )
    vgg16_weights: str | None = pydantic.Field(
        None, description=f"path of torchvision's {VGG16_WEIGHTS_FILE}; None = torch.hub.get_dir()/checkpoints/"
        f"{VGG16_WEIGHTS_FILE}"
    )
    vgg_imagenet_norm: bool = pydantic.Field(
        False, description="normalise VGG inputs with ImageNet mean/std; official: False (it feeds 2·I − 1)"
    )
    base_classifier_steps: int = pydantic.Field(
        500, ge=1, description="Adam steps (batches of min(batch_size, #base images)) training the base_classifier "
        "perceptual network on the base classes, once at the start of fit (not counted in budget.steps); not in the "
        "paper"
    )
    base_classifier_lr: float = pydantic.Field(1e-3, gt=0, description="Adam learning rate of that training")
    base_classifier_width: int = pydantic.Field(
        32, ge=1, description="channels of the base_classifier perceptual network's conv blocks"
    )
    interpolation: Literal["slerp", "lerp"] = pydantic.Field(
        "slerp", description="how sample() mixes two codes of a class: slerp (official default) or lerp then "
        "re-normalise (official is_lerp, ablation)"
    )
    slerp_t: tuple[float, ...] = pydantic.Field(
        (0.1, 0.2, 0.3, 0.4), min_length=1, description="interpolation weights t drawn uniformly per sample "
        "(official linspace(0.1, 0.4, 4)); [0.5]: midpoints between two codes (the MNIST suites' glico-midpoint)"
    )
    use_base: bool = pydantic.Field(
        False, description="also learn codes for the base images (one model over base and novel classes); default "
        "False: the paper learns from the small labelled sample only"
    )
    sampling: Literal["epochs", "class_balanced"] = pydantic.Field(
        "epochs", description="training batches: epochs (random permutations of the training images, as the official "
        "shuffled DataLoader) or class_balanced (a class uniformly, then one of its images; useful with use_base)"
    )

    @pydantic.field_validator("betas")
    @classmethod
    def _check_betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError(f"Adam betas must lie in [0, 1), got {value}")
        return value

    @pydantic.field_validator("slerp_t")
    @classmethod
    def _check_t(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0 <= t <= 1 for t in value):
            raise ValueError(f"interpolation weights must lie in [0, 1], got {value}")
        return value

    @pydantic.model_validator(mode="after")
    def _check_levels(self) -> GLICOConfig:
        if self.perceptual == "base_classifier" and self.perceptual_levels is not None and self.perceptual_levels > 4:
            raise ValueError("the base_classifier perceptual network has 4 levels; perceptual_levels must be <= 4")
        return self


# ---- interpolation ---------------------------------------------------------------------------------------------------

def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def slerp(a: Tensor, b: Tensor, t: Tensor | float) -> Tensor:
    """Spherical interpolation between the directions of ``a`` and ``b`` (rows, ``…×D``) at ``t`` (scalar or ``…``).

    Returns unit vectors: ``t = 0`` gives ``a/|a|``, ``t = 1`` gives ``b/|b|``. Nearly parallel pairs fall back to
    normalised linear interpolation (the official ``slerp`` uses lerp when ``sin ω = 0``).
    """
    a, b = _unit(a), _unit(b)
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    if t.ndim < a.ndim:
        t = t.unsqueeze(-1)
    cos = (a * b).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    parallel = sin < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    out = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / safe
    out = torch.where(parallel, (1 - t) * a + t * b, out)
    return _unit(out)


def lerp_normalised(a: Tensor, b: Tensor, t: Tensor | float) -> Tensor:
    """Linear interpolation of the directions of ``a`` and ``b``, projected back onto the unit sphere."""
    a, b = _unit(a), _unit(b)
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    if t.ndim < a.ndim:
        t = t.unsqueeze(-1)
    return _unit((1 - t) * a + t * b)


# ---- networks --------------------------------------------------------------------------------------------------------

def _plan(image_size: int) -> tuple[int, int]:
    if image_size not in _GENERATOR_PLAN:
        raise ValueError(f"GLICO supports image sizes {SUPPORTED_SIZES}, got {image_size} (resize the dataset, e.g. "
                         "dataset.image_size)")
    return _GENERATOR_PLAN[image_size]


def default_perceptual_levels(image_size: int) -> int:
    """Official ``distance_metric``: 2 levels at 16 px, 3 at 32 px (and 28 px), 4 at 64 px."""
    if image_size <= 16:
        return 2
    if image_size <= 32:
        return 3
    return 4


class GlicoGenerator(nn.Module):
    """The official CIFAR ``_netG``: normalised code ⊕ noise → Linear → 1024 → Linear → ``2w·s·s`` → transposed convs
    → sigmoid (images in [0, 1]); LeakyReLU(0.2) everywhere, no batch norm."""

    def __init__(self, code_dim: int, noise_dim: int, channels: int, image_size: int, width: int = 64,
                 hidden: int = 1024, noise_proj: bool = False, fold_output: bool = False) -> None:
        super().__init__()
        self.fold_output = fold_output  # the last transposed convolution by nets.conv_transpose2d_by_fold
        start, steps = _plan(image_size)
        self.code_dim, self.noise_dim = code_dim, noise_dim
        top = width * 2 ** (steps - 1)
        self.shape = (top, start, start)
        self.noise_proj = nn.Linear(noise_dim, noise_dim, bias=False) if noise_proj and noise_dim > 0 else None
        self.lin_in = nn.Linear(code_dim + noise_dim, hidden, bias=False)
        self.lin_im = nn.Linear(hidden, top * start * start, bias=False)
        self.convs = nn.ModuleList(
            nn.ConvTranspose2d(top // 2**i, top // 2 ** (i + 1) if i < steps - 1 else channels, 4, 2, 1)
            for i in range(steps)
        )
        self.act = nn.LeakyReLU(0.2)

    def forward(self, z: Tensor, noise: Tensor | None = None) -> Tensor:
        z = z / z.norm(dim=1, keepdim=True).detach().clamp_min(1e-12)  # official: divide by the detached norm
        if self.noise_dim > 0:
            if noise is None or noise.shape != (z.shape[0], self.noise_dim):
                raise ValueError(f"GlicoGenerator needs noise of shape ({z.shape[0]}, {self.noise_dim})")
            if self.noise_proj is not None:
                noise = self.act(self.noise_proj(noise))
            z = torch.cat([z, noise], 1)
        h = self.act(self.lin_in(z))
        h = self.act(self.lin_im(h)).view(-1, *self.shape)
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            h = deconvolve(conv, h, fold=self.fold_output and i == last)
            if i < last:
                h = self.act(h)
        return torch.sigmoid(h)


class SmallCNN(nn.Module):
    """The official ``cnn`` classifier: four blocks of 3×3 conv → BN → LeakyReLU(0.1) → 2×2 max-pool, then a linear
    layer to logits (the official trailing softmax is dropped). ``features(x, levels)`` returns the block outputs
    before pooling (the perceptual features of ``perceptual = "base_classifier"``)."""

    def __init__(self, channels: int, image_size: int, num_classes: int, width: int = 64,
                 batch_norm: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels if i == 0 else width, width, 3, 1, 1),
                          nn.BatchNorm2d(width) if batch_norm else nn.Identity(), nn.LeakyReLU(0.1))
            for i in range(4)
        )
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"SmallCNN needs images of at least 16 px, got {image_size}")
        self.head = nn.Linear(width * side * side, num_classes)
        self.num_classes = num_classes

    def features(self, x: Tensor, levels: int) -> list[Tensor]:
        out = []
        for i, block in enumerate(self.blocks[:levels]):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = F.max_pool2d(block(x), 2)
        return self.head(x.flatten(1)).float()  # float32 logits under bf16 autocast: the loss in float32


class VGG16Features(nn.Module):
    """torchvision's VGG-16 ``features`` up to the last tapped layer, returning the official taps.

    ``layers[i]`` has the index of ``torchvision.models.vgg16().features[i]`` (so state-dict keys match). Tap ``k`` is
    layer ``VGG16_LAYER_IDS[k]``'s output, passed through the following ReLU for all but the last tap, as the official
    network's in-place ReLU does to the tensors it stored.
    """

    def __init__(self, levels: int, imagenet_norm: bool = False) -> None:
        super().__init__()
        if not 1 <= levels <= len(VGG16_LAYER_IDS):
            raise ValueError(f"VGG-16 perceptual levels must be in [1, {len(VGG16_LAYER_IDS)}], got {levels}")
        layers: list[nn.Module] = []
        in_channels = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_channels, int(v), 3, padding=1), nn.ReLU()]
                in_channels = int(v)
        ids = VGG16_LAYER_IDS[:levels]
        self.layers = nn.Sequential(*layers[: ids[-1] + 1])
        self.taps = tuple(i + 1 if i != ids[-1] and isinstance(layers[i + 1], nn.ReLU) else i for i in ids)
        self.imagenet_norm = imagenet_norm
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x`` in [-1, 1], 1 or 3 channels."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.imagenet_norm:
            x = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


def check_vgg16_weights(path: str | os.PathLike | None) -> Path:
    """The VGG-16 weights file the config names (or the torch hub cache's); :class:`FileNotFoundError` naming the
    expected file when it is missing. Never downloads."""
    path = Path(path) if path is not None else default_vgg16_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"GLICO perceptual='vgg16' needs torchvision's ImageNet VGG-16 weights file {VGG16_WEIGHTS_FILE!r} at "
            f"{path} (the torch hub cache, torch.hub.get_dir()/checkpoints/, or the config field vgg16_weights). "
            "Nothing is downloaded: copy the file there (it is https://download.pytorch.org/models/"
            f"{VGG16_WEIGHTS_FILE}), set vgg16_weights, or use perceptual='base_classifier' or 'pixel'."
        )
    return path


def default_vgg16_path() -> Path:
    """Where torchvision caches the ImageNet VGG-16 weights: ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_WEIGHTS_FILE


def load_vgg16_features(path: str | os.PathLike | None, levels: int, imagenet_norm: bool = False) -> VGG16Features:
    """Frozen :class:`VGG16Features` with weights read from ``path`` (a torchvision VGG-16 state dict, whole or only its
    ``features.*`` entries); never downloads. Raises :class:`FileNotFoundError` naming the expected file."""
    path = check_vgg16_weights(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, ValueError):  # legacy (non-zip) serialisation cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    net = VGG16Features(levels, imagenet_norm)
    wanted = net.layers.state_dict().keys()
    picked = {}
    for key in wanted:
        for candidate in (f"features.{key}", key):
            if candidate in state:
                picked[key] = state[candidate]
                break
    missing = sorted(set(wanted) - set(picked))
    if missing:
        raise ValueError(f"{path} is not a torchvision VGG-16 state dict: missing features.{missing[0]} "
                         f"(and {len(missing) - 1} more)")
    net.layers.load_state_dict(picked)
    net.eval().requires_grad_(False)
    return net


def _adam(params, lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.Adam:
    """Adam, fused where PyTorch has a fused kernel (on the CPU about 10× faster than the default implementation for
    the generator's 3-4 M linear weights: 4 ms instead of 45 ms per step on the development machine)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=device.type in ("cpu", "cuda"))


@torch.no_grad()
def _init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """Official ``weights_init``: linear and conv weights Xavier-normal with gain √2; biases 0; BN weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            gain = math.sqrt(2.0)
            fill_contiguous(m.weight, lambda w: nn.init.xavier_normal_(w, gain=gain, generator=generator))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()


# ---- the method ------------------------------------------------------------------------------------------------------

class GLICO(GenerativeMethod):
    """GLICO: per-image latent codes + generator learnt by perceptual reconstruction and classification; samples by
    interpolating same-class codes. See the module docstring for the details and the deviations from the official
    code.

    After ``fit``: ``codes`` (``N × code_dim``, unit rows), ``code_labels`` (``N``, the class of each code, in the
    order of the training pool: novel shots, then base images when ``use_base``), ``classes`` (the classes with
    codes).
    """

    name = "glico"
    Config = GLICOConfig
    conditional = True
    supports_epochs = True  # the official schedule counts epochs (steps_per_epoch)
    default_changes = {2: ("schedule",),  # the official schedule became the default (was the long one)
                       3: ("precision", "channels_last")}  # bf16 + channels-last became the default (was fp32)
    description = ("GLICO (Azuri & Weinshall 2020): per-image latent codes + generator learnt by perceptual "
                   "reconstruction and classification; samples by slerp between same-class codes")

    @classmethod
    def check_environment(cls, config: GLICOConfig) -> None:
        if config.perceptual == "vgg16":
            check_vgg16_weights(config.vgg16_weights)

    def __init__(self, config: GLICOConfig, image_shape: tuple[int, int, int], num_classes: int,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(config, image_shape, num_classes, device)
        channels, height, width = self.image_shape
        if height != width:
            raise ValueError(f"glico: square images only, got {height}×{width}")
        _plan(height)
        if num_classes < 1:
            raise ValueError(f"glico is conditional and needs num_classes >= 1, got {num_classes}")
        c = config
        self.levels = c.perceptual_levels or default_perceptual_levels(height)
        if c.perceptual == "base_classifier":
            self.levels = min(self.levels, 4)
        # the VGG weights are read now, so a missing file fails before any training
        self.vgg = (load_vgg16_features(c.vgg16_weights, self.levels, c.vgg_imagenet_norm).to(self.device)
                    if c.perceptual == "vgg16" else None)
        # the official generators take ε only with --noise_proj (noise_input = "official")
        self.noise_dim = c.noise_dim if c.noise_input == "concat" or c.noise_proj else 0
        self.G = GlicoGenerator(c.code_dim, self.noise_dim, channels, height, c.width, c.hidden, c.noise_proj,
                                c.fold_output)
        self.G.to(self.device)
        prepare_networks([self.G], c)
        # placeholder weights; fit() re-draws them from task.seed
        _init_weights(self.G, torch.Generator(device=self.device).manual_seed(0))
        self.codes: Tensor | None = None
        self.code_labels: Tensor | None = None
        self.classes: tuple[int, ...] = ()
        self.base_classes: tuple[int, ...] = ()
        self.classifier: SmallCNN | None = None
        self.base_classifier: SmallCNN | None = None
        self.base_classifier_info: dict[str, float] = {}
        self.opt_codes: torch.optim.Adam | None = None
        self.opt_g: torch.optim.Adam | None = None
        self.opt_c: torch.optim.SGD | None = None
        self.step = 0
        self._rng: torch.Generator | None = None
        self._order: Tensor | None = None  # current permutation of the training pool (sampling="epochs")
        self._pos = 0  # position in it
        self._batch_size = 64  # the fit's budget.batch_size (base-classifier batches)
        self._feature_cache: list[Tensor] | None = None  # frozen-network features of the training images

    # ---- setup ------------------------------------------------------------------------------------------------------

    def training_pool(self, task: FewShotTask) -> tuple[LabeledImages, dict[str, Any]]:
        """The images that get codes: the novel shots, then (``use_base``) the base images. Nothing else."""
        if task.image_shape != self.image_shape:
            raise ValueError(f"glico: task images are {task.image_shape}, the method was built for {self.image_shape}")
        parts = [task.novel] + ([task.base] if self.config.use_base and len(task.base) else [])
        pool = LabeledImages.concat(parts) if len(parts) > 1 else task.novel
        if len(pool) == 0:
            raise ValueError("glico: the task has no training images")
        low, high = int(pool.labels.min()), int(pool.labels.max())
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"glico: labels must lie in [0, {self.num_classes}), got [{low}, {high}]")
        info = {
            "pool_images": len(pool),
            "novel_images": len(task.novel),
            "pool_classes": len(pool.classes),
            "use_base": self.config.use_base,
            "perceptual": self.config.perceptual,
            "perceptual_levels": 0 if self.config.perceptual == "pixel" else self.levels,
            "sampling": self.config.sampling,
        }
        return pool, info

    def _build(self, labels: Tensor, classes: tuple[int, ...], base_classes: tuple[int, ...]) -> None:
        """Create the task-sized parts (codes, classifiers, optimisers) with placeholder values."""
        c = self.config
        channels, size, _ = self.image_shape
        self.code_labels = labels.to(self.device, torch.long).clone()
        self.classes = tuple(classes)
        self.codes = torch.zeros(len(labels), c.code_dim, device=self.device, requires_grad=True)
        self.classifier = None
        if c.gamma > 0:
            self.classifier = SmallCNN(channels, size, len(self.classes), c.classifier_width,
                                       c.classifier_batch_norm).to(self.device)
        self.base_classes = tuple(base_classes)
        self.base_classifier = None
        if c.perceptual == "base_classifier":
            self.base_classifier = SmallCNN(channels, size, len(self.base_classes), c.base_classifier_width)
            self.base_classifier.to(self.device)
        prepare_networks([net for net in (self.classifier, self.base_classifier) if net is not None], c)
        self._make_optimizers()

    def _make_optimizers(self, lr_factor: float = 1.0) -> None:
        """Fresh optimisers (zero moments); ``lr_factor`` scales the codes' and the generator's rates (the decay)."""
        c = self.config
        self.opt_codes = _adam([self.codes], c.lr_codes * lr_factor, c.betas, self.device)
        self.opt_g = _adam(self.G.parameters(), c.lr_g * lr_factor, c.betas, self.device)
        self.opt_c = None
        if self.classifier is not None:
            self.opt_c = prepare_optimizer(torch.optim.SGD(
                self.classifier.parameters(), lr=c.lr_classifier, momentum=c.classifier_momentum,
                weight_decay=c.classifier_weight_decay), c)

    def _start(self, task: FewShotTask, pool: LabeledImages) -> None:
        """Fresh start at step 0: everything drawn from ``task.seed``; the base classifier is trained here."""
        c = self.config
        rng = self._rng = torch.Generator(device=self.device).manual_seed(task.seed)
        if c.perceptual == "base_classifier" and len(task.base) == 0:
            raise ValueError("glico: perceptual='base_classifier' trains on the base classes, but the task has no "
                             "base images; use perceptual='vgg16' or 'pixel'")
        self._build(pool.labels, pool.classes, task.base.classes if len(task.base) else ())
        _init_weights(self.G, rng)
        with torch.no_grad():
            self.codes.normal_(0.0, 0.01, generator=rng)  # official: Embedding weights N(0, 0.01)
            self.codes.div_(self.codes.norm(dim=1, keepdim=True).clamp_min(1e-12))
        if self.classifier is not None:
            _init_weights(self.classifier, rng)
        self._order, self._pos = None, 0
        if self.base_classifier is not None:
            _init_weights(self.base_classifier, rng)
            base = task.base.to(self.device)
            self._train_base_classifier(base.images * 2 - 1, self._class_index(base.labels, self.base_classes))

    def _class_index(self, labels: Tensor, classes: tuple[int, ...]) -> Tensor:
        """Map dataset labels to ``0..len(classes)-1``."""
        table = torch.full((self.num_classes,), -1, dtype=torch.long, device=labels.device)
        table[torch.tensor(classes, dtype=torch.long, device=labels.device)] = torch.arange(
            len(classes), device=labels.device)
        return table[labels.long()]

    def _train_base_classifier(self, images: Tensor, targets: Tensor) -> None:
        """Train the perceptual CNN on base-class images (in [-1, 1]) and freeze it. ``batch_size`` is the fit's."""
        c = self.config
        net = self.base_classifier
        opt = _adam(net.parameters(), c.base_classifier_lr, (0.9, 0.999), self.device)
        batch = min(self._batch_size, len(targets))
        net.train()
        loss = acc = torch.zeros((), device=self.device)
        for _ in range(c.base_classifier_steps):
            idx = torch.randint(len(targets), (batch,), generator=self._rng, device=self.device)
            logits = net(images[idx])
            loss = F.cross_entropy(logits, targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc = (logits.detach().argmax(1) == targets[idx]).float().mean()
        net.eval().requires_grad_(False)
        final_loss, final_acc = torch.stack([loss.detach(), acc]).tolist()
        if not math.isfinite(final_loss):
            raise TrialDiverged(f"glico: base classifier loss {final_loss}")
        self.base_classifier_info = {"base_classifier_loss": final_loss, "base_classifier_acc": final_acc,
                                     "base_classifier_images": len(targets)}

    def _check_resume(self, pool: LabeledImages) -> None:
        if self._rng is None or self.codes is None:
            raise RuntimeError(f"glico: step {self.step} without a full state; restore the whole state_dict before "
                               "resuming")
        if self.codes.shape[0] != len(pool) or not torch.equal(self.code_labels, pool.labels.to(self.device).long()):
            raise ValueError("glico: the restored codes do not belong to this task's training images")

    # ---- training ---------------------------------------------------------------------------------------------------

    def _next_batch(self, n: int, batch: int, targets: Tensor) -> Tensor:
        rng = self._rng
        if self.config.sampling == "class_balanced":
            k = len(self.classes)
            counts = torch.bincount(targets, minlength=k)
            order = torch.argsort(targets, stable=True)
            offsets = torch.cumsum(counts, 0) - counts
            cls = torch.randint(k, (batch,), generator=rng, device=self.device)
            u = torch.rand(batch, generator=rng, device=self.device)
            within = torch.minimum((u * counts[cls]).long(), counts[cls] - 1)
            return order[offsets[cls] + within]
        if self._order is None or self._pos >= n:
            self._order = torch.randperm(n, generator=rng, device=self.device)
            self._pos = 0
        idx = self._order[self._pos:self._pos + batch]
        self._pos += len(idx)
        return idx

    def perceptual_features(self, x: Tensor) -> list[Tensor]:
        """Features of images in [-1, 1] used by the reconstruction loss (empty for ``pixel``)."""
        if self.vgg is not None:
            return self.vgg(x)
        if self.base_classifier is not None:
            return self.base_classifier.features(x, self.levels)
        return []

    def reconstruction_loss(self, fake: Tensor, real: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Official ``_VGGDistance`` on images in [-1, 1]: per image mean |Δpixel| + Σ_levels mean |Δfeature|,
        averaged over the batch. Returns ``(loss, pixel part)``. With ``index`` (the training images' positions) the
        features of ``real`` come from the cache built at the start of ``fit`` when there is one."""
        b = fake.shape[0]
        pixel = (fake - real).abs().reshape(b, -1).mean(1)
        loss = pixel
        feats_fake = self.perceptual_features(fake)
        if feats_fake:
            if index is not None and self._feature_cache is not None:
                feats_real = [f[index] for f in self._feature_cache]
            else:
                with torch.no_grad():
                    feats_real = self.perceptual_features(real)
            for f, r in zip(feats_fake, feats_real):
                loss = loss + (f - r).abs().reshape(b, -1).mean(1)
        return loss.mean(), pixel.mean()

    @torch.no_grad()
    def _cache_features(self, images: Tensor) -> None:
        """The perceptual network is frozen and the training images fixed, so their features are computed once (saves
        a third of the perceptual cost per step) when they fit in ``FEATURE_CACHE_BYTES``."""
        self._feature_cache = None
        if self.config.perceptual == "pixel":
            return
        probe = self.perceptual_features(images[:1])
        if sum(f.numel() * f.element_size() for f in probe) * len(images) > FEATURE_CACHE_BYTES:
            return
        chunks = [self.perceptual_features(images[i:i + SAMPLE_CHUNK]) for i in range(0, len(images), SAMPLE_CHUNK)]
        self._feature_cache = [torch.cat([chunk[level] for chunk in chunks]) for level in range(len(probe))]

    def _noise(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor | None:
        if self.noise_dim == 0:
            return None
        return torch.randn(n, self.noise_dim, generator=generator, device=device) * self.config.noise_std

    @property
    def decay_epochs(self) -> int:
        """Epochs between two decays of the rates (0: never): ``lr_decay_epochs``, else the schedule's."""
        c = self.config
        if c.lr_decay_epochs is not None:
            return c.lr_decay_epochs
        return OFFICIAL_DECAY_EPOCHS if c.schedule == "official" else 0

    def _lr_factor(self, epoch: int) -> float:
        decay = self.decay_epochs
        return self.config.lr_decay_rate ** (epoch // decay) if decay else 1.0

    def _schedule(self, step: int, per_epoch: int) -> None:
        """Before training step ``step``: under ``official`` fresh optimisers at every epoch's first step (official
        ``train_long`` builds ``optimizerG``, ``optimizerZ`` and ``optimizerD`` inside its epoch loop) with the
        epoch's decayed rates; under ``long`` the persistent optimisers get the epoch's rates when a decay is set."""
        c = self.config
        epoch, within = divmod(step, per_epoch)
        if c.schedule == "official":
            if within == 0:
                self._make_optimizers(self._lr_factor(epoch))
            return
        if not self.decay_epochs:
            return
        factor = self._lr_factor(epoch)
        for group in self.opt_codes.param_groups:
            group["lr"] = c.lr_codes * factor
        for group in self.opt_g.param_groups:
            group["lr"] = c.lr_g * factor

    def steps_per_epoch(self, task: FewShotTask, batch_size: int) -> int:
        """Batches in one pass over the images that get codes: ``ceil(N / min(batch_size, N))``."""
        n = len(self.training_pool(task)[0])
        return math.ceil(n / min(batch_size, n))

    def _train_step(self, images: Tensor, targets: Tensor, batch: int) -> dict[str, Tensor]:
        c = self.config
        idx = self._next_batch(len(targets), batch, targets)
        real, y = images[idx], targets[idx]
        noise = self._noise(len(idx), self._rng, self.device)
        fake = self.G(self.codes[idx], noise) * 2 - 1
        rec, pixel = self.reconstruction_loss(fake, real, idx)
        loss = rec
        losses = {"rec": rec.detach(), "pixel": pixel.detach()}
        if self.classifier is not None:
            logits = self.classifier(fake)
            ce = F.cross_entropy(logits, y)
            loss = rec + c.gamma * ce
            losses["cls"] = ce.detach()
            losses["cls_acc"] = (logits.detach().argmax(1) == y).float().mean()
        self.opt_codes.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        if self.opt_c is not None:
            self.opt_c.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_codes.step()
        self.opt_g.step()
        if self.opt_c is not None:
            self.opt_c.step()
        with torch.no_grad():  # back onto the unit sphere (official get_norm after every batch)
            self.codes.div_(self.codes.norm(dim=1, keepdim=True).clamp_min(1e-12))
        losses["loss"] = loss.detach()
        return losses

    def fit(self, task: FewShotTask, budget: Budget, hooks: FitHooks) -> None:
        total = self.steps_for(task, budget)
        if self.step >= total:
            return
        pool, info = self.training_pool(task)
        pool = pool.to(self.device)
        self._batch_size = budget.batch_size
        if self.step == 0:
            self._start(task, pool)
        else:
            self._check_resume(pool)
        info = {**info, **self.base_classifier_info}
        images = pool.images * 2 - 1
        self._cache_features(images)
        targets = self._class_index(pool.labels, self.classes)
        n = len(targets)
        batch = min(budget.batch_size, n)
        per_epoch = math.ceil(n / batch)
        self.G.train()
        if self.classifier is not None:
            self.classifier.train()
        for step in range(self.step, total):
            self._schedule(step, per_epoch)
            with autocast(self.config, self.device):
                losses = self._train_step(images, targets, batch)
            self.step = step + 1
            hooks.step_end(step, losses, info)
        self._feature_cache = None  # rebuilt by the next fit; not part of the state

    # ---- sampling ---------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def interpolate_codes(self, labels: Tensor, generator: torch.Generator | None = None
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The latent codes ``sample`` feeds the generator: ``(z, a, b, t)`` with ``z[j] = interp(codes[a[j]],
        codes[b[j]], t[j])``, ``a[j]`` and ``b[j]`` codes of class ``labels[j]`` (distinct when it has two or more)
        and ``t[j]`` drawn from ``slerp_t``. Random draws come from ``generator`` (on its device)."""
        if self.codes is None:
            raise RuntimeError("glico: no latent codes yet; call fit (or load_state_dict) before sample")
        labels = torch.as_tensor(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
        n = labels.shape[0]
        dev = generator.device if generator is not None else torch.device("cpu")
        unknown = sorted(set(labels.tolist()) - set(self.classes))
        if unknown:
            raise ValueError(f"glico: no codes for classes {unknown}; it was fitted on classes {self.classes}")
        code_labels = self.code_labels.to(dev)
        order = torch.argsort(code_labels, stable=True)
        counts_all = torch.bincount(code_labels, minlength=self.num_classes)
        offsets_all = torch.cumsum(counts_all, 0) - counts_all
        y = labels.to(dev, torch.long)
        counts, offsets = counts_all[y], offsets_all[y]
        u1 = torch.rand(n, generator=generator, device=dev)
        u2 = torch.rand(n, generator=generator, device=dev)
        first = torch.minimum((u1 * counts).long(), counts - 1)
        others = (counts - 1).clamp_min(1)
        shift = 1 + torch.minimum((u2 * others).long(), others - 1)
        second = torch.where(counts > 1, (first + shift) % counts, first)
        a, b = order[offsets + first], order[offsets + second]
        ts = torch.tensor(self.config.slerp_t, dtype=torch.float32, device=dev)
        t = ts[torch.randint(len(ts), (n,), generator=generator, device=dev)]
        a, b, t = a.to(self.device), b.to(self.device), t.to(self.device)
        mix = slerp if self.config.interpolation == "slerp" else lerp_normalised
        z = mix(self.codes[a], self.codes[b], t)
        return z, a, b, t

    @torch.no_grad()
    def sample(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``len(labels)`` images in [0, 1] on ``self.device``: interpolated same-class codes (``interpolate_codes``)
        and fresh noise ε, all drawn from ``generator``."""
        z, _, _, _ = self.interpolate_codes(labels, generator)
        n = z.shape[0]
        dev = generator.device if generator is not None else torch.device("cpu")
        noise = self._noise(n, generator, dev)
        noise = None if noise is None else noise.to(self.device)
        was_training = self.G.training
        self.G.eval()
        try:
            chunks = [self.G(z[i:i + SAMPLE_CHUNK], None if noise is None else noise[i:i + SAMPLE_CHUNK])
                      for i in range(0, n, SAMPLE_CHUNK)]
        finally:
            self.G.train(was_training)
        images = torch.cat(chunks) if chunks else z.new_empty(0, *self.image_shape)
        return images.clamp_(0, 1)

    @torch.no_grad()
    def reconstruct(self, index: Tensor | None = None) -> Tensor:
        """``G([z_i, 0])`` for the codes ``index`` (all by default), images in [0, 1]."""
        if self.codes is None:
            raise RuntimeError("glico: no latent codes yet; call fit first")
        z = self.codes if index is None else self.codes[index]
        noise = None if self.noise_dim == 0 else z.new_zeros(z.shape[0], self.noise_dim)
        return self.G(z, noise)

    # ---- state ------------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (tensors copied): codes and their labels, generator, classifiers, optimisers, step counter,
        batch-permutation position and random generator state. The VGG weights are not included (read from file)."""
        def sd(module: nn.Module | torch.optim.Optimizer | None) -> dict[str, Any] | None:
            return None if module is None else module.state_dict()

        return copy.deepcopy({
            **state_header(self),
            "classes": self.classes,
            "base_classes": self.base_classes,
            "codes": None if self.codes is None else self.codes.detach(),
            "code_labels": self.code_labels,
            "G": self.G.state_dict(),
            "classifier": sd(self.classifier),
            "base_classifier": sd(self.base_classifier),
            "base_classifier_info": self.base_classifier_info,
            "opt_codes": sd(self.opt_codes),
            "opt_g": sd(self.opt_g),
            "opt_c": sd(self.opt_c),
            "order": self._order,
            "pos": self._pos,
            "rng": None if self._rng is None else self._rng.get_state(),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_header(self, state)
        self.G.load_state_dict(state["G"])
        self.step = int(state["step"])
        if state["codes"] is None:
            self.codes = self.code_labels = None
            self.classes, self.base_classes = (), ()
            self.classifier = self.base_classifier = None
            self.opt_codes = self.opt_c = None
            self.opt_g = None
        else:
            self._build(state["code_labels"], tuple(state["classes"]), tuple(state["base_classes"]))
            with torch.no_grad():
                self.codes.copy_(state["codes"].to(self.device))
            if self.classifier is not None:
                self.classifier.load_state_dict(state["classifier"])
            if self.base_classifier is not None:
                self.base_classifier.load_state_dict(state["base_classifier"])
                self.base_classifier.eval().requires_grad_(False)
            self.opt_codes.load_state_dict(state["opt_codes"])
            self.opt_g.load_state_dict(state["opt_g"])
            if self.opt_c is not None:
                self.opt_c.load_state_dict(state["opt_c"])
        self.base_classifier_info = dict(state.get("base_classifier_info") or {})
        self._order = None if state["order"] is None else state["order"].to(self.device)
        self._pos = int(state["pos"])
        self._rng = None
        if state["rng"] is not None:
            self._rng = torch.Generator(device=self.device)
            self._rng.set_state(state["rng"])
