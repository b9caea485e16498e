"""MetaCGAN: a conditional GAN whose generator gets one deconvolution's weights from a meta-learner (a hypernetwork).

Papers: "MetaCGAN: A Novel GAN Model for Generating High Quality and Diversity Images with Few Training Data" (IJCNN
2020) and its journal extension "ML-CGAN: Conditional Generative Adversarial Network with a Meta-learner Structure for
High-Quality Image Generation with Few Training Data" (Cognitive Computation 13(2), 2021), Ma et al. The authors
published no code; this module is the harness's reference implementation. :class:`MetaCGAN`'s docstring lists what
follows the papers and what is our choice.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
import torch
from torch import Tensor, nn

from harness.api import FewShotTask, LabeledImages
from methods.adversarial import SAMPLE_CHUNK, AdversarialConfig, AdversarialMethod, BatchSampler, adam
from methods.performance import channels_last_field, precision_field, redefault
from methods.dcgan import DCGAN
from methods.nets import Discriminator, dcgan_init

__all__ = ["AlternatingSources", "ClassGroups", "MetaCGAN", "MetaCGANConfig", "MetaNet", "SupportContext"]

RMSPROP_ALPHA = 0.99  # PyTorch's RMSprop defaults (the papers give only "RMSProp" and the rate)
RMSPROP_EPS = 1e-8
WARMUP_STEPS = round(1 / (1 - RMSPROP_ALPHA))  # the square average's time constant


class MetaCGANConfig(AdversarialConfig):
    """Algorithm 1's settings (N_c = 4; learning rate 2·10⁻⁴; RMSProp for the discriminator and the encoders, Adam
    with β1 = 0.5, β2 = 0.9 for the generator) plus our choices where the papers are silent (marked "ours")."""

    model_config = pydantic.ConfigDict(extra="forbid")

    n_c: int = pydantic.Field(
        4, ge=1, description="iteration i (0-based) trains on a batch of base classes when i % n_c == 0, else on the "
        "novel classes (paper: N_c = 4); n_c = 1 means base classes only"
    )
    lr_g: float = pydantic.Field(
        2e-4, gt=0, description="Adam learning rate of the generator and the parameter generator (paper: 2e-4)"
    )
    lr_d: float = pydantic.Field(
        2e-4, gt=0, description="RMSProp learning rate of the discriminator and the encoders (paper: 2e-4)"
    )
    beta1: float = pydantic.Field(0.5, ge=0, lt=1, description="generator Adam β1 (paper: 0.5)")
    beta2: float = pydantic.Field(0.9, ge=0, lt=1, description="generator Adam β2 (paper: 0.9)")
    # bf16 + channels-last since defaults version 3: tied with fp32 on 12 (split, seed) pairs (reports/bf16_paired)
    precision: Literal["fp32", "bf16"] = precision_field("bf16")
    channels_last: bool = channels_last_field(True)
    # since defaults version 4, the slow-spot settings: the generated output layer (per-sample weights) as a batched
    # product + F.fold, the label maps as a per-class lookup and fused Adam. Against version 3 over 12 (split, seed)
    # pairs on validation classes, tied on every metric with no collapse in either arm (reports/fast_paths_metacgan);
    # what they buy per step is in reports/benchmarks.md
    fused_optimizer: bool = redefault(AdversarialConfig, "fused_optimizer", True)
    fold_output: bool = redefault(AdversarialConfig, "fold_output", True)
    label_lookup: bool = redefault(AdversarialConfig, "label_lookup", True)
    latent_dim: int = pydantic.Field(
        64, ge=1, description="size of the encoders' latent code z_j (ours: LEO's 64; the papers do not say)"
    )
    encoder_width: int | None = pydantic.Field(
        None, ge=1, description="channels of the encoders' first feature map (DCGAN discriminator body); None = width "
        "(ours)"
    )
    support_size: int = pydantic.Field(
        10, ge=1, description="at most this many images of a class form the task encoder's support set in a training "
        "step, a random subset when the class has more (ours)"
    )
    generated_layer: Annotated[int, pydantic.Field(ge=0)] | Literal["last"] = pydantic.Field(
        "last", description="which generator deconvolution the parameter generator provides: an index into "
        "nets.Generator.deconvolutions (the up-blocks', then the output layer's) or 'last' = the output layer (ours)"
    )
    generator_norm: Literal["batch", "instance", "layer", "none"] = pydantic.Field(
        "batch", description="normalisation in the generator's stem and up-blocks: batch (ours: DCGAN's) or "
        "instance (the seed notes' trick \"use instance batch normalization\" read as applying to G too)"
    )
    discriminator_norm: Literal["batch", "layer", "instance", "none"] = pydantic.Field(
        "batch", description="normalisation in the discriminator: batch (ours: DCGAN's) or instance (the seed "
        "notes' trick read as applying to D too)"
    )
    encoder_norm: Literal["instance", "layer", "batch", "none"] = pydantic.Field(
        "instance", description="normalisation in the task and image encoders (ours: instance norm, so an image's "
        "code does not depend on the rest of its batch)"
    )
    encoder_update: Literal["discriminator", "generator"] = pydantic.Field(
        "generator", description="which update trains the encoders: 'generator' = with G's Adam on L_G (default "
        "since defaults version 2, chosen on validation classes: reports/seed_methods_ablation); 'discriminator' = "
        "with D's RMSProp on L_D (Algorithm 1 read literally; the default before)"
    )
    d_optimizer_start: Literal["pytorch", "bias_corrected", "warmup"] = pydantic.Field(
        "pytorch", description="how the discriminator's RMSProp (α = 0.99, ε = 1e-8) starts: 'pytorch' = "
        "torch.optim.RMSprop (square average from zero, no bias correction: the first steps are up to ~10× the "
        "nominal rate); 'bias_corrected' = the square average divided by 1 − α^t (Adam with β1 = 0, β2 = α); "
        "'warmup' = PyTorch's RMSProp with the rate ramped linearly over the first 1/(1 − α) = 100 steps"
    )


# ---- support sets ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SupportContext:
    """What the encoders see for a batch of ``N`` samples whose classes form ``U`` distinct support sets.

    ``support`` (M×C×H×W) holds the support sets one after the other, ``segment`` (M,) the set of each image,
    ``sizes`` (U,) the images per set, ``inverse`` (N,) each sample's set, ``images`` (N×C×H×W) each sample's input to
    the image encoder (one image of its class). Images are in the training scale [-1, 1].
    """

    support: Tensor
    segment: Tensor
    sizes: Tensor
    inverse: Tensor
    images: Tensor


class ClassGroups:
    """Images grouped by class (held in memory, in [-1, 1]): uniform batches, support sets, one image per label."""

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int) -> None:
        labels = labels.long()
        order = torch.argsort(labels, stable=True)
        self.images, self.labels = images[order], labels[order]
        self.counts = torch.bincount(self.labels, minlength=num_classes)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self._counts, self._offsets = self.counts.tolist(), self.offsets.tolist()
        self.batches = BatchSampler(self.images, self.labels, "uniform")

    @classmethod
    def of(cls, images: LabeledImages, num_classes: int) -> ClassGroups | None:
        """From images in [0, 1]; ``None`` when there are none."""
        return cls(images.images * 2 - 1, images.labels, num_classes) if len(images) else None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(c for c, n in enumerate(self._counts) if n)

    def has(self, labels: Tensor) -> bool:
        return bool((labels < len(self._counts)).all()) and bool((self.counts[labels] > 0).all())

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A batch drawn uniformly over the images (for equally many images per class: class-balanced)."""
        return self.batches.draw(n, generator)

    def support_indices(self, label: int, size: int | None, generator: torch.Generator | None) -> Tensor:
        """Indices of ``label``'s support set: all its images, or a random subset of ``size`` when it has more."""
        n, offset = self._counts[label], self._offsets[label]
        device = self.labels.device
        if size is None or n <= size:
            return torch.arange(offset, offset + n, device=device)
        return offset + torch.randperm(n, generator=generator, device=device)[:size]

    def context(self, labels: Tensor, support_size: int | None, generator: torch.Generator | None = None,
                uniform: Tensor | None = None) -> SupportContext:
        """The encoders' inputs for samples of classes ``labels``: one support set per distinct class (random subsets
        of ``support_size``, or all images when ``None``) and, per sample, one image of its class chosen by
        ``uniform`` (values in [0, 1), drawn from ``generator`` when not given)."""
        classes, inverse = torch.unique(labels, return_inverse=True)
        parts = [self.support_indices(c, support_size, generator) for c in classes.tolist()]
        sizes = torch.tensor([len(p) for p in parts], device=labels.device)
        segment = torch.repeat_interleave(torch.arange(len(parts), device=labels.device), sizes)
        if uniform is None:
            uniform = torch.rand(labels.shape[0], generator=generator, device=labels.device)
        counts = self.counts[labels]
        pick = self.offsets[labels] + torch.minimum((uniform * counts).long(), counts - 1)
        return SupportContext(self.images[torch.cat(parts)], segment, sizes.float(), inverse, self.images[pick])


@dataclass(frozen=True)
class AlternatingSources:
    """Algorithm 1's two data sources: iteration ``i`` draws from ``base`` when ``i % n_c == 0``, else from ``novel``
    (a task without one of them uses the other every time)."""

    base: ClassGroups | None
    novel: ClassGroups | None

    def source(self, iteration: int, n_c: int) -> Literal["base", "novel"]:
        wanted = "base" if iteration % n_c == 0 else "novel"
        if getattr(self, wanted) is None:
            return "novel" if wanted == "base" else "base"
        return wanted


# ---- the meta-learner ------------------------------------------------------------------------------------------------

class MetaNet(nn.Module):
    """Task encoder, image encoder and parameter generator.

    Both encoders are the DCGAN discriminator body of :mod:`methods.nets` (no labels) with a head of ``2·latent``
    outputs ``(m, s)``, read as ``μ = tanh(m)`` and ``σ = sigmoid(s)``: bounded codes, so ``|z_j| ≤ 1 + |ε|``
    (unbounded ones, e.g. ``μ = m``, ``σ = softplus(s)``, grew without limit and ``θ_j`` exploded; see
    :class:`MetaCGAN`). The task encoder pools its per-image features over the support set by their mean (invariant
    to the set's order and to repeating it, any size) before its head. The parameter generator is affine:
    ``θ_j = θ_0 + P z_j``, ``P`` a bias-free linear map and ``θ_0`` the generator's own weight of that layer (so the
    affine offset is the backbone's weight and no backbone parameter is left unused).
    """

    def __init__(self, channels: int, image_size: int, encoder_width: int, encoder_norm: str, latent_dim: int,
                 weight_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.weight_shape = tuple(weight_shape)
        self.task_encoder = Discriminator(channels, image_size, encoder_width, 0, encoder_norm, 2 * latent_dim)
        self.image_encoder = Discriminator(channels, image_size, encoder_width, 0, encoder_norm, 2 * latent_dim)
        self.param_generator = nn.Linear(latent_dim, math.prod(weight_shape), bias=False)

    def encoders(self) -> list[nn.Module]:
        return [self.task_encoder, self.image_encoder]

    def encode(self, context: SupportContext) -> tuple[Tensor, Tensor]:
        """Per sample ``(μ_j, σ_j)`` = the means of the task encoder's and the image encoder's ``(μ, σ)``."""
        features = self.task_encoder.features(context.support)
        pooled = features.new_zeros(context.sizes.shape[0], features.shape[1]).index_add(0, context.segment, features)
        task = self.task_encoder.head(pooled / context.sizes[:, None])[context.inverse]
        image = self.image_encoder(context.images)
        mu_t, s_t = task.chunk(2, dim=1)
        mu_i, s_i = image.chunk(2, dim=1)
        return (torch.tanh(mu_t) + torch.tanh(mu_i)) / 2, (torch.sigmoid(s_t) + torch.sigmoid(s_i)) / 2

    def weights(self, mu: Tensor, sigma: Tensor, eps: Tensor, offset: Tensor) -> Tensor:
        """``θ_j = θ_0 + P(μ_j + σ_j ε)``, one weight per sample: ``(N, *weight_shape)``."""
        z = mu + sigma * eps
        return offset + self.param_generator(z).view(-1, *self.weight_shape)


# ---- the method ------------------------------------------------------------------------------------------------------

class MetaCGAN(AdversarialMethod):
    """MetaCGAN / ML-CGAN: a conditional DCGAN whose generator takes one deconvolution's weights, per sample, from a
    meta-learner that reads the sample's class through its support set.

    **From the papers.** Task encoder on a class's support set → ``(μ_t, σ_t)``; image encoder on one image of the
    class → ``(μ_i, σ_i)``; ``μ_j = (μ_t + μ_i)/2``, ``σ_j = (σ_t + σ_i)/2``, ``z_j = μ_j + σ_j ε``; the parameter
    generator maps ``z_j`` to the weights ``θ_j`` of a deconvolution of the generator (a hypernetwork, as in LEO, Rusu
    et al. 2018). Algorithm 1: iteration ``i`` draws its batch ``(x, z, y)`` from the base classes when
    ``i % N_c == 0``, else from the novel classes (``N_c = 4``); ``L_D = log D(x|y) + log(1 − D(G(z|y)))``; the
    discriminator θ_d and the encoders θ_j are updated with RMSProp on ``L_D``, the generator θ_G (with the parameter
    generator) with Adam (β1 = 0.5, β2 = 0.9), on the non-saturating ``log D(G(z|y))``; learning rate 2·10⁻⁴.

    **N_c.** Iterations are the 0-based step counter, so steps 0, N_c, 2·N_c, … are base batches: exactly one step in
    N_c. The rule ``i % N_c == 0`` makes ``N_c = 1`` "base classes only" (the novel shots then reach the model only
    through the encoders when sampling). A task with no base (no novel) images uses the other source every step. The
    source of every step is logged as ``info["batch_source"]``.

    **How the encoders learn** (``encoder_update``). With ``"discriminator"`` (Algorithm 1 read literally) the
    encoders learn from L_D. In the discriminator
    update the fake batch is generated *with* the encoders' gradient path: encoders → ``z_j`` → parameter generator →
    ``θ_j`` → generator layer → fake images → D → ``L_D``, while the generator's and the parameter generator's own
    weights are frozen for that update (they pass gradient, they get none). RMSProp then steps D and the encoders. In
    the generator update the encoders are frozen and Adam steps the generator and the parameter generator on ``L_G``.
    Read literally the encoders thus help D, adversarially to G — and since they set the generated layer's weights,
    their noise (σ pushed to its cap, as helping D rewards) lands on every sample. ``encoder_update="generator"``
    (the default) trains them with G's Adam on ``L_G`` (LEO-style, the encoder trained with the task's loss) and
    generates the discriminator's fakes without gradient, as the other baselines do.

    **Open readings of the notes**, each a named option, measured against each other on validation classes (12
    class-split × seed pairs, paired tests: ``reports/seed_methods_ablation/``, commentary in ``reports/README.md``).
    A default moved only where the paired tests said so:

    * ``encoder_update``: Algorithm 1's line 18 updates "θ_d, θ_j" with RMSProp on L_D, and θ_j names both the
      feature extractors' parameters (its Require line) and the generated weights (line 14). ``discriminator`` reads
      it literally (the encoders learn with D); ``generator`` lets them learn with G on L_G (LEO-style). Default
      ``generator`` since defaults version 2: the ablation found it better conditioned and more precise, with fewer
      collapses, and no metric significantly worse;
    * ``generator_norm`` / ``discriminator_norm``: the notes' trick "use instance batch normalization" does not say
      where. Default: instance norm in the encoders only (``encoder_norm``), batch norm in G and D (DCGAN);
      ``instance`` in G and D is the other reading, kept off: the ablation found lower recall and one diverging pair;
    * ``generated_layer``: the notes say "a deconvolution layer" of G. Default ``last``, the output layer (cheapest;
      the codes' noise lands on pixels); an index picks an up-block (``0``: the first), whose output the following
      norm re-scales — not better in the ablation, and 2-8× the cost;
    * ``d_optimizer_start``: the notes give "RMSProp" and a rate. PyTorch's RMSprop has no bias correction, so
      while the generator's Adam starts at its nominal rate, D's first steps are up to ~10× larger (``pytorch``,
      default); ``bias_corrected`` and ``warmup`` remove that head start — tied with the default in the ablation.

    **Our choices** (the papers are silent):

    * backbone: :mod:`methods.nets`' conditional DCGAN (label embedding in G's stem, one-hot label maps in D), BCE
      losses (D: ``softplus(−D(x)) + softplus(D(G(z)))``, G: ``softplus(−D(G(z)))``); RMSProp with PyTorch's
      α = 0.99 and ε = 1e-8;
    * the generated layer (``generated_layer``): the output deconvolution by default. Per-sample weights run as one
      grouped transposed convolution (:func:`methods.nets.conv_transpose2d_per_sample`). The parameter generator is a
      ``latent_dim × numel(θ)`` matrix: at width 32 on 28×28×1, ``64 × (32·1·4·4) = 32 768`` parameters for the output
      layer (98 304 for 3 channels), ``64 × (64·32·4·4) ≈ 2.1 M`` for deconvolution 0; initialised N(0, 0.02/√latent)
      so that ``θ_j`` starts at DCGAN's weight scale;
    * encoders: the DCGAN discriminator body at ``encoder_width`` with instance norm, latent size 64, the task
      encoder mean-pooling its features over the support set; no KL term on ``z_j`` (Algorithm 1 has none);
    * bounded codes, ``μ = tanh(·)`` and ``σ = sigmoid(·)`` (the papers do not say how μ and σ are read off).
      Without a bound nothing limits the codes: on embedded MNIST (width 32, batch 64, base 0-4, 10 shots of 5-9)
      ``|μ|`` reached 2 (paper rule) and 13 (``encoder_update="generator"``) within 300-1000 steps, ``θ_j`` left the
      weight scale by 5-7×, D won outright (``loss_d`` → 0) and the samples were noise in both modes. With the bound
      both modes gave digits of every class at 1000 steps (one seed; the paper rule noisier, its encoders driving
      σ to its maximum, as helping D rewards);
    * support sets in training: for a batch of class ``y`` the task encoder sees at most ``support_size`` of the
      method's images of ``y`` (all k shots of a novel class when k ≤ support_size; a random subset of a base class),
      one set per distinct class per step; the image encoder sees one random image of class ``y`` per sample. The
      same support sets and images serve the step's discriminator and generator updates; noise ``z`` and ``ε`` are
      drawn afresh for each. Batches are uniform over the source's images;
    * sampling class ``c``: the task encoder sees all images kept for ``c`` (a novel class's k shots; for a base
      class, ``support_size`` images chosen once from the task seed), the image encoder one of them drawn with the
      sampling generator, then ``ε``, ``θ_j`` and the image; the generator runs in eval mode. Those images are part of
      ``state_dict``, so a restored method samples without the task.

    **Cost** (2-core development CPU, 1 thread, batch 64, 28×28×1, best of 5 windows of 8 steps, CGAN in the same
    run): width 32, 61 ms per step against CGAN's 37 ms; width 64, 146 ms against 90 ms. The extra is the encoders
    (two D-sized networks on the support sets and a batch of images, forward in both updates, backward in D's) and
    the D update's backward into the generated layer. ``generated_layer=0`` costs 107 ms and 500 ms (a 2.1 M and an
    8.4 M parameter generator).
    """

    name = "metacgan"
    Config = MetaCGANConfig
    default_changes = {2: ("encoder_update",),  # "generator" became the default (was "discriminator")
                       3: ("precision", "channels_last"),  # bf16 + channels-last became the default (was fp32)
                       4: ("fused_optimizer", "fold_output", "label_lookup")}  # the three became the default (off)
    conditional = True
    description = "MetaCGAN / ML-CGAN (Ma et al. 2020/2021): conditional GAN with a meta-learned generator layer"

    def __init__(self, config: MetaCGANConfig, image_shape: tuple[int, int, int], num_classes: int,
                 device: torch.device | str = "cpu") -> None:
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} expects a {self.Config.__name__}, got {type(config).__name__}")
        # the base class builds G and D with these (class variables elsewhere; configurable here)
        self.generator_norm = config.generator_norm
        self.critic_norm = config.discriminator_norm
        self._support: ClassGroups | None = None
        self._last_source: str | None = None
        super().__init__(config, image_shape, num_classes, device)

    # ---- construction -----------------------------------------------------------------------------------------------

    def build_modules(self) -> None:
        c = self.config
        layers = self.G.deconvolutions
        index = len(layers) - 1 if c.generated_layer == "last" else c.generated_layer
        if index >= len(layers):
            raise ValueError(f"{self.name}: generated_layer {index} out of range; the generator for "
                             f"{self.image_shape[-1]}×{self.image_shape[-1]} images has {len(layers)} deconvolutions")
        self.layer_index = index
        channels, size, _ = self.image_shape
        self.meta = MetaNet(channels, size, c.encoder_width or c.width, c.encoder_norm, c.latent_dim,
                            tuple(layers[index].weight.shape)).to(self.device)

    def networks(self) -> list[nn.Module]:
        return [*super().networks(), self.meta]

    def _init_weights(self, generator: torch.Generator) -> None:
        super()._init_weights(generator)
        for encoder in self.meta.encoders():
            dcgan_init(encoder, generator)
        std = 0.02 / math.sqrt(self.config.latent_dim)
        nn.init.normal_(self.meta.param_generator.weight, 0.0, std, generator=generator)

    def _encoder_parameters(self) -> list[nn.Parameter]:
        return [p for encoder in self.meta.encoders() for p in encoder.parameters()]

    def make_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        c = self.config
        g_params = list(self.G.parameters()) + list(self.meta.param_generator.parameters())
        d_params = list(self.D.parameters())
        if c.encoder_update == "discriminator":
            d_params += self._encoder_parameters()
        else:
            g_params += self._encoder_parameters()
        return adam(g_params, c.lr_g, (c.beta1, c.beta2)), self._d_optimizer(d_params)

    def _d_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """Algorithm 1's RMSProp for D (and, by the paper's rule, the encoders), started as ``d_optimizer_start``
        says. RMSProp with bias correction is Adam without momentum: ``v_t = α v + (1 − α) g²``, step
        ``lr · g / (√(v_t / (1 − α^t)) + ε)``."""
        c = self.config
        if c.d_optimizer_start == "bias_corrected":
            return torch.optim.Adam(params, lr=c.lr_d, betas=(0.0, RMSPROP_ALPHA), eps=RMSPROP_EPS)
        return torch.optim.RMSprop(params, lr=c.lr_d, alpha=RMSPROP_ALPHA, eps=RMSPROP_EPS)

    def _d_learning_rate(self) -> float:
        """D's rate at the current step: ``lr_d``, ramped linearly over the first ``1/(1 − α)`` steps with
        ``d_optimizer_start="warmup"`` (from the step counter alone, so a resumed fit continues the ramp)."""
        c = self.config
        if c.d_optimizer_start != "warmup":
            return c.lr_d
        return c.lr_d * min(1.0, (self.step + 1) / WARMUP_STEPS)

    d_loss = DCGAN.d_loss  # BCE, the two terms summed
    g_loss = DCGAN.g_loss  # non-saturating -log D(G(z))

    # ---- the generator with generated weights -----------------------------------------------------------------------

    def generated_weights(self, context: SupportContext, eps: Tensor) -> Tensor:
        """``θ_j`` for each sample of ``context`` (``eps``: N×latent_dim): ``(N, *layer weight shape)``."""
        mu, sigma = self.meta.encode(context)
        return self.meta.weights(mu, sigma, eps, self.G.deconvolutions[self.layer_index].weight)

    def generate(self, z: Tensor, labels: Tensor, context: SupportContext, eps: Tensor) -> Tensor:
        """Images in [-1, 1] from noise ``z``, classes ``labels`` and the encoders' inputs ``context``."""
        theta = self.generated_weights(context, eps)
        return self.G(z, labels, {self.layer_index: theta})

    def _eps(self, n: int) -> Tensor:
        return torch.randn(n, self.config.latent_dim, generator=self._rng, device=self.device)

    # ---- training ---------------------------------------------------------------------------------------------------

    def training_pool(self, task: FewShotTask) -> tuple[LabeledImages, dict[str, Any]]:
        pool, info = super().training_pool(task)
        info.update(sampling="alternating", n_c=self.config.n_c, support_size=self.config.support_size,
                    generated_layer=self.layer_index)
        return pool, info

    def make_sampler(self, task: FewShotTask, pool: LabeledImages) -> AlternatingSources:
        base = ClassGroups.of(task.base.to(self.device), self.num_classes)
        novel = ClassGroups.of(task.novel.to(self.device), self.num_classes)
        if self.step == 0 or self._support is None:
            self._support = self._sampling_support(task, base, novel)
        self.meta.train()
        return AlternatingSources(base, novel)

    def _sampling_support(self, task: FewShotTask, base: ClassGroups | None,
                          novel: ClassGroups | None) -> ClassGroups:
        """What ``sample`` encodes: every novel shot, and ``support_size`` images per base class drawn once from the
        task seed (a generator of its own, so the training randomness does not depend on it)."""
        images, labels = [], []
        if novel is not None:
            images.append(novel.images)
            labels.append(novel.labels)
        if base is not None:
            chooser = torch.Generator(device=self.device).manual_seed(task.seed)
            index = torch.cat([base.support_indices(c, self.config.support_size, chooser) for c in base.classes])
            images.append(base.images[index])
            labels.append(base.labels[index])
        return ClassGroups(torch.cat(images), torch.cat(labels), self.num_classes)

    def _trainable(self, *, g: bool, d: bool, encoders: bool) -> None:
        self.G.requires_grad_(g)
        self.meta.param_generator.requires_grad_(g)
        self.D.requires_grad_(d)
        for encoder in self.meta.encoders():
            encoder.requires_grad_(encoders)

    def _train_step(self, sampler: AlternatingSources, batch_size: int) -> dict[str, Tensor]:
        rng, c = self._rng, self.config
        source = sampler.source(self.step, c.n_c)
        groups = sampler.base if source == "base" else sampler.novel
        self._last_source = source
        real, labels = groups.draw(batch_size, rng)
        context = groups.context(labels, c.support_size, rng)
        encoders_with_d = c.encoder_update == "discriminator"

        # discriminator (and, by the paper's rule, encoders) on L_D; G and P pass gradient to the encoders only
        self._trainable(g=False, d=True, encoders=encoders_with_d)
        with torch.set_grad_enabled(encoders_with_d):
            fake = self.generate(self._noise(batch_size), labels, context, self._eps(batch_size))
        real_in, fake_in = self._augment(real), self._augment(fake)
        real_logits = self.D(real_in, labels)
        fake_logits = self.D(fake_in, labels)
        loss_d = self.d_loss(real_logits, fake_logits, real_in, fake_in, labels)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        for group in self.opt_d.param_groups:
            group["lr"] = self._d_learning_rate()
        self.opt_d.step()
        self.after_d_step()

        # generator and parameter generator (and, with encoder_update="generator", the encoders) on L_G
        self._trainable(g=True, d=False, encoders=not encoders_with_d)
        fake = self.generate(self._noise(batch_size), labels, context, self._eps(batch_size))
        loss_g = self.g_loss(self.D(self._augment(fake), labels))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self._trainable(g=True, d=True, encoders=True)

        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": real_logits.detach().mean(),
            "d_fake": fake_logits.detach().mean(),
        }

    def step_info(self) -> dict[str, Any]:
        return {"batch_source": self._last_source}

    # ---- sampling and state -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``len(labels)`` images in [0, 1]: per image, noise ``z``, ``ε`` and the choice of the image encoder's input
        come from ``generator``; the task encoder sees every image kept for the class (module docstring)."""
        labels = torch.as_tensor(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
        if self._support is None:
            raise RuntimeError(f"{self.name}: no support images to condition on; fit() or load_state_dict() first")
        n = labels.shape[0]
        noise_device = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(n, self.config.z_dim, generator=generator, device=noise_device).to(self.device)
        eps = torch.randn(n, self.config.latent_dim, generator=generator, device=noise_device).to(self.device)
        uniform = torch.rand(n, generator=generator, device=noise_device).to(self.device)
        cond = labels.to(self.device, torch.long)
        if n and (int(cond.min()) < 0 or int(cond.max()) >= self.num_classes):
            raise ValueError(f"{self.name}: labels must lie in [0, {self.num_classes})")
        if n and not self._support.has(cond):
            missing = sorted(set(cond.tolist()) - set(self._support.classes))
            raise ValueError(f"{self.name}: no images of classes {missing} to condition on (known: "
                             f"{list(self._support.classes)})")
        modes = (self.G.training, self.meta.training)
        self.G.eval()
        self.meta.eval()
        try:
            chunks = []
            for i in range(0, n, SAMPLE_CHUNK):
                part = slice(i, i + SAMPLE_CHUNK)
                context = self._support.context(cond[part], None, uniform=uniform[part])
                chunks.append(self.generate(z[part], cond[part], context, eps[part]))
        finally:
            self.G.train(modes[0])
            self.meta.train(modes[1])
        images = torch.cat(chunks) if chunks else z.new_empty(0, *self.image_shape)
        return ((images + 1) / 2).clamp_(0, 1)

    def state_dict(self) -> dict[str, Any]:
        """The base state plus the meta-learner's weights and the images ``sample`` conditions on."""
        state = super().state_dict()
        support = None
        if self._support is not None:
            support = {"images": self._support.images, "labels": self._support.labels}
        state.update(copy.deepcopy({"meta": self.meta.state_dict(), "support": support}))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.meta.load_state_dict(state["meta"])
        support = state["support"]
        self._support = None
        if support is not None:
            self._support = ClassGroups(support["images"].to(self.device), support["labels"].to(self.device),
                                        self.num_classes)
