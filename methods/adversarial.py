"""The one adversarial training loop shared by every GAN method.

:class:`AdversarialMethod` owns the generator and discriminator (:mod:`methods.nets`), their optimisers, the in-memory
batch sampler, the random generator, the step counter, the critic updates per generator update, optional DiffAugment,
``state_dict`` and sampling. After every step it calls ``hooks.step_end`` with that step's losses as tensors and does no
other bookkeeping: logging, checkpoints and the divergence check are the harness's. A method supplies only what
differs:

* ``make_optimizers()`` → ``(opt_g, opt_d)``;
* ``d_loss(real_logits, fake_logits, real, fake, labels)`` and ``g_loss(fake_logits)``;
* optionally ``penalty(real, fake, labels)`` (added to the discriminator loss, logged as ``gp``), ``after_d_step()``
  (e.g. weight clipping), the class variable ``critic_norm`` and, for conditional methods, ``sampling_mode()``.

A method whose step differs more (e.g. MetaCGAN: extra networks, batches alternating between base and novel classes)
overrides ``_train_step`` and uses the generic hooks ``build_modules()`` (its extra networks, built before weights are
initialised and optimisers made), ``make_sampler(task, pool)`` (what ``_train_step`` draws batches from) and
``step_info()`` (facts about the step just taken, added to the ``info`` of ``step_end``); ``fit`` stays the one loop.

One *step* is one generator update preceded by ``n_critic`` discriminator updates (each on a fresh real batch), as in
the papers' algorithms; ``budget.steps`` counts steps. Training images are scaled once to [-1, 1] (the tanh range).
Randomness (initial weights, batches, noise, augmentations, gradient-penalty mixing) comes from one ``torch.Generator``
on ``self.device`` seeded with ``task.seed`` when training starts at step 0; its state is part of ``state_dict``, so a
restored method continues exactly as if it had never stopped.
"""

from __future__ import annotations

import abc
import copy
from typing import Any, ClassVar, Literal

import pydantic
import torch
from torch import Tensor

from harness.api import Budget, FewShotTask, FitHooks, GenerativeMethod, LabeledImages
from methods.state import check_state_header, state_header
from methods.diffaugment import diff_augment, parse_policy
from methods.nets import Discriminator, Generator, dcgan_init
from methods.performance import PerformanceConfig, autocast, prepare_networks, prepare_optimizer

__all__ = ["AdversarialConfig", "AdversarialMethod", "BatchSampler", "adam"]

SAMPLE_CHUNK = 256  # images per generator forward in sample()


def adam(params, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam as every baseline builds it: PyTorch's default implementation (the config's ``fused_optimizer`` swaps in
    the fused kernel, :func:`methods.performance.prepare_optimizer`)."""
    return torch.optim.Adam(params, lr=lr, betas=betas)


class AdversarialConfig(PerformanceConfig):
    """Fields every GAN baseline has; each method adds its learning rates (``lr_g``, ``lr_d``) and the rest. The speed
    settings (``precision``, ``channels_last``, ``compile``, ``fused_optimizer``) are :mod:`methods.performance`'s."""

    model_config = pydantic.ConfigDict(extra="forbid")

    z_dim: int = pydantic.Field(100, ge=1, description="noise dimension (DCGAN: 100)")
    width: int = pydantic.Field(
        64, ge=1, description="channels of the feature maps next to the image; they double per halving of the size "
        "(DCGAN's ngf = ndf = 64)"
    )
    diffaugment: bool = pydantic.Field(
        False, description="apply DiffAugment (Zhao et al. 2020) to real and fake images before the discriminator"
    )
    diffaugment_policy: str = pydantic.Field(
        "color,translation,cutout", description="comma-separated DiffAugment policy (the paper's choice for few data)"
    )
    label_lookup: bool = pydantic.Field(
        False, description="conditional discriminators: the one-hot label maps' response computed once per class and "
        "looked up per sample (nets.OneHotMapConv); same values up to rounding"
    )

    @pydantic.field_validator("diffaugment_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        parse_policy(value)
        return value


class BatchSampler:
    """Draws batches from images held in memory by indexing, no ``DataLoader``.

    ``mode="uniform"``: every image equally likely (the pool as one data set). ``mode="class_balanced"``: a class
    uniformly, then one of its images uniformly. Drawing never synchronises with the device.
    """

    def __init__(self, images: Tensor, labels: Tensor, mode: Literal["uniform", "class_balanced"] = "uniform") -> None:
        if images.shape[0] == 0:
            raise ValueError("no training images")
        if mode not in ("uniform", "class_balanced"):
            raise ValueError(f"unknown sampling mode {mode!r}")
        self.mode = mode
        if mode == "class_balanced":
            order = torch.argsort(labels, stable=True)
            images, labels = images[order], labels[order]
            _, counts = torch.unique_consecutive(labels, return_counts=True)
            self._counts = counts
            self._offsets = torch.cumsum(counts, 0) - counts
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def indices(self, n: int, generator: torch.Generator) -> Tensor:
        device = self.labels.device
        if self.mode == "uniform":
            return torch.randint(len(self), (n,), generator=generator, device=device)
        cls = torch.randint(len(self._counts), (n,), generator=generator, device=device)
        u = torch.rand(n, generator=generator, device=device)
        counts = self._counts[cls]
        within = torch.minimum((u * counts).long(), counts - 1)
        return self._offsets[cls] + within

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = self.indices(n, generator)
        return self.images[idx], self.labels[idx]

    def draw_labels(self, n: int, generator: torch.Generator) -> Tensor:
        return self.labels[self.indices(n, generator)]


class AdversarialMethod(GenerativeMethod):
    """Base class of the GAN baselines: the training loop, state and sampling; see the module docstring."""

    Config: ClassVar[type[AdversarialConfig]] = AdversarialConfig
    critic_norm: ClassVar[str] = "batch"  # the discriminator's normalisation (nets.Discriminator's ``norm``)
    generator_norm: ClassVar[str] = "batch"

    def __init__(self, config: AdversarialConfig, image_shape: tuple[int, int, int], num_classes: int,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(config, image_shape, num_classes, device)
        channels, height, width = self.image_shape
        if height != width:
            raise ValueError(f"{self.name}: square images only, got {height}×{width}")
        if self.conditional and num_classes < 1:
            raise ValueError(f"{self.name} is conditional and needs num_classes >= 1, got {num_classes}")
        label_classes = num_classes if self.conditional else 0
        self.G = Generator(config.z_dim, channels, height, config.width, label_classes, self.generator_norm,
                           fold_output=config.fold_output)
        self.D = Discriminator(channels, height, config.width, label_classes, self.critic_norm,
                               label_lookup=config.label_lookup)
        self.G.to(self.device)
        self.D.to(self.device)
        self.build_modules()
        prepare_networks(self.networks(), config)
        # placeholder weights so that sample() works before fit(); fit() re-draws them from task.seed
        self._init_weights(torch.Generator(device=self.device).manual_seed(0))
        self.opt_g, self.opt_d = (prepare_optimizer(opt, config) for opt in self.make_optimizers())
        self.step = 0
        self._rng: torch.Generator | None = None

    # ---- what a method supplies -------------------------------------------------------------------------------------

    @abc.abstractmethod
    def make_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """``(optimiser of self.G, optimiser of self.D)``."""

    @abc.abstractmethod
    def d_loss(self, real_logits: Tensor, fake_logits: Tensor, real: Tensor, fake: Tensor,
               labels: Tensor | None) -> Tensor:
        """Discriminator loss (to minimise); ``real``/``fake`` are the images the discriminator saw."""

    @abc.abstractmethod
    def g_loss(self, fake_logits: Tensor) -> Tensor:
        """Generator loss (to minimise)."""

    def penalty(self, real: Tensor, fake: Tensor, labels: Tensor | None) -> Tensor | None:
        """A term added to the discriminator loss (e.g. a gradient penalty), or ``None``."""
        return None

    def after_d_step(self) -> None:
        """Called after every discriminator update (e.g. weight clipping)."""

    def sampling_mode(self) -> Literal["uniform", "class_balanced"]:
        return "uniform"

    def build_modules(self) -> None:
        """Called once by ``__init__`` after ``G`` and ``D`` exist (on ``self.device``), before the weights are
        initialised and the optimisers made: a method adds its other networks here. It then also initialises them in
        ``_init_weights``, optimises them in ``make_optimizers`` and saves them in ``state_dict``."""

    def networks(self) -> list[torch.nn.Module]:
        """Every network of the method (the speed settings apply to these): ``G``, ``D`` and those added by
        ``build_modules``."""
        return [self.G, self.D]

    def make_sampler(self, task: FewShotTask, pool: LabeledImages) -> Any:
        """What ``_train_step`` draws its batches from, made once per ``fit`` call (``pool``: ``training_pool``'s
        images, on ``self.device``). Default: a :class:`BatchSampler` over ``pool`` scaled to [-1, 1]."""
        return BatchSampler(pool.images * 2 - 1, pool.labels.long(), self.sampling_mode())

    def step_info(self) -> dict[str, Any]:
        """Facts about the step just taken, merged into the ``info`` passed to ``hooks.step_end`` with its losses
        (default: none)."""
        return {}

    @property
    def n_critic(self) -> int:
        """Discriminator updates per generator update."""
        return int(getattr(self.config, "n_critic", 1))

    # ---- the loop ---------------------------------------------------------------------------------------------------

    def _init_weights(self, generator: torch.Generator) -> None:
        dcgan_init(self.G, generator)
        dcgan_init(self.D, generator)

    def training_pool(self, task: FewShotTask) -> tuple[LabeledImages, dict[str, Any]]:
        """The images to train on and facts about them for the log: unconditional methods use the novel class's
        shots only; conditional ones base and novel classes together."""
        if task.image_shape != self.image_shape:
            raise ValueError(f"{self.name}: task images are {task.image_shape}, the method was built for "
                             f"{self.image_shape}")
        if not self.conditional:
            if len(task.novel_classes) != 1:
                raise ValueError(
                    f"{self.name} is unconditional and is fitted on one novel class at a time, got novel classes "
                    f"{task.novel_classes}"
                )
            pool = task.novel
        else:
            pool = LabeledImages.concat([task.base, task.novel]) if len(task.base) else task.novel
        if len(pool) == 0:
            raise ValueError(f"{self.name}: the task has no training images")
        info = {
            "pool_images": len(pool),
            "novel_images": len(task.novel),
            "pool_classes": len(task.novel_classes) + (len(task.base_classes) if self.conditional else 0),
            "sampling": getattr(self.config, "sampling", self.sampling_mode()) if self.conditional else "novel_shots",
            "n_critic": self.n_critic,
        }
        return pool, info

    def _augment(self, x: Tensor) -> Tensor:
        if not self.config.diffaugment:
            return x
        return diff_augment(x, self.config.diffaugment_policy, self._rng)

    def fit(self, task: FewShotTask, budget: Budget, hooks: FitHooks) -> None:
        if self.step >= budget.steps:
            return
        pool, info = self.training_pool(task)
        pool = pool.to(self.device)
        if self.conditional:
            low, high = int(pool.labels.min()), int(pool.labels.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(f"{self.name}: labels must lie in [0, {self.num_classes}), got [{low}, {high}]")
        sampler = self.make_sampler(task, pool)
        if self.step == 0:
            self._rng = torch.Generator(device=self.device).manual_seed(task.seed)
            self._init_weights(self._rng)
        elif self._rng is None:
            raise RuntimeError(f"{self.name}: step {self.step} without a random generator state; restore the whole "
                               "state_dict before resuming")
        self.G.train()
        self.D.train()
        for step in range(self.step, budget.steps):
            with autocast(self.config, self.device):
                losses = self._train_step(sampler, budget.batch_size)
            self.step = step + 1
            hooks.step_end(step, losses, {**info, **self.step_info()})

    def _noise(self, n: int) -> Tensor:
        return torch.randn(n, self.config.z_dim, generator=self._rng, device=self.device)

    def _train_step(self, sampler: BatchSampler, batch_size: int) -> dict[str, Tensor]:
        rng = self._rng
        self.D.requires_grad_(True)
        for _ in range(self.n_critic):
            real, labels = sampler.draw(batch_size, rng)
            cond = labels if self.conditional else None
            with torch.no_grad():
                fake = self.G(self._noise(batch_size), cond)
            real_in, fake_in = self._augment(real), self._augment(fake)
            real_logits = self.D(real_in, cond)
            fake_logits = self.D(fake_in, cond)
            loss_d = self.d_loss(real_logits, fake_logits, real_in, fake_in, cond)
            penalty = self.penalty(real_in, fake_in, cond)
            if penalty is not None:
                loss_d = loss_d + penalty
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            self.after_d_step()

        self.D.requires_grad_(False)  # the generator step needs gradients through D, not of D's weights
        cond = sampler.draw_labels(batch_size, rng) if self.conditional else None
        fake = self.G(self._noise(batch_size), cond)
        loss_g = self.g_loss(self.D(self._augment(fake), cond))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)

        losses = {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": real_logits.detach().mean(),
            "d_fake": fake_logits.detach().mean(),
        }
        if penalty is not None:
            losses["gp"] = penalty.detach()
        return losses

    # ---- sampling and state -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``len(labels)`` images in [0, 1] on ``self.device``; the generator runs in eval mode (batch-norm running
        statistics), so each image depends only on its noise (drawn from ``generator``) and label."""
        labels = torch.as_tensor(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
        n = labels.shape[0]
        noise_device = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(n, self.config.z_dim, generator=generator, device=noise_device).to(self.device)
        cond = None
        if self.conditional:
            cond = labels.to(self.device, torch.long)
            if n and (int(cond.min()) < 0 or int(cond.max()) >= self.num_classes):
                raise ValueError(f"{self.name}: labels must lie in [0, {self.num_classes})")
        was_training = self.G.training
        self.G.eval()
        try:
            chunks = [
                self.G(z[i:i + SAMPLE_CHUNK], None if cond is None else cond[i:i + SAMPLE_CHUNK])
                for i in range(0, n, SAMPLE_CHUNK)
            ]
        finally:
            self.G.train(was_training)
        images = torch.cat(chunks) if chunks else z.new_empty(0, *self.image_shape)
        return ((images + 1) / 2).clamp_(0, 1)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (tensors copied): networks, optimisers, step counter and random generator state."""
        return copy.deepcopy({
            **state_header(self),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": None if self._rng is None else self._rng.get_state(),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_header(self, state)
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])
        self._rng = None
        if state["rng"] is not None:
            self._rng = torch.Generator(device=self.device)
            self._rng.set_state(state["rng"])
