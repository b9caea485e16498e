"""DCGAN (Radford, Metz & Chintala 2016, "Unsupervised Representation Learning with Deep Convolutional GANs").

Unconditional: the harness fits one model per novel class on that class's k shots.
"""

from __future__ import annotations

from typing import Literal

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor

from methods.adversarial import AdversarialConfig, AdversarialMethod, adam
from methods.performance import channels_last_field, precision_field

__all__ = ["DCGAN", "DCGANConfig"]


class DCGANConfig(AdversarialConfig):
    """Paper settings (Sec. 4): Adam, learning rate 0.0002, β1 = 0.5 (β2 is not stated: PyTorch's default 0.999, as in
    the reference implementations), z of dimension 100 drawn from a normal distribution (the paper says uniform; the
    authors' and PyTorch's reference code use normal), weights N(0, 0.02), batch norm in G and D, mini-batch 128 (the
    batch size is the harness's Budget)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    lr_g: float = pydantic.Field(2e-4, gt=0, description="generator Adam learning rate (paper: 0.0002)")
    lr_d: float = pydantic.Field(2e-4, gt=0, description="discriminator Adam learning rate (paper: 0.0002)")
    beta1: float = pydantic.Field(0.5, ge=0, lt=1, description="Adam β1 (paper: 0.5)")
    beta2: float = pydantic.Field(0.999, ge=0, lt=1, description="Adam β2 (paper silent; PyTorch default 0.999)")
    # bf16 + channels-last since defaults version 2: tied with fp32 on 12 (split, seed) pairs (reports/bf16_paired)
    precision: Literal["fp32", "bf16"] = precision_field("bf16")
    channels_last: bool = channels_last_field(True)


class DCGAN(AdversarialMethod):
    """DCGAN: the binary cross-entropy GAN with the non-saturating generator loss ``-log D(G(z))``.

    Discriminator loss ``BCE(D(x), 1) + BCE(D(G(z)), 0)`` (the two terms summed, as in the PyTorch DCGAN example),
    real and fake batches through D separately (separate batch-norm statistics, as in the paper's code). Generator
    and discriminator: :mod:`methods.nets` (transposed/strided 4×4 convolutions, ReLU/LeakyReLU(0.2), tanh output, no
    batch norm on D's first layer).
    """

    name = "dcgan"
    Config = DCGANConfig
    default_changes = {2: ("precision", "channels_last")}  # bf16 + channels-last became the default (was fp32)
    conditional = False
    description = "DCGAN (Radford et al. 2016), one unconditional model per novel class trained on its k shots"

    def make_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        c = self.config
        betas = (c.beta1, c.beta2)
        return adam(self.G.parameters(), c.lr_g, betas), adam(self.D.parameters(), c.lr_d, betas)

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor, real: Tensor, fake: Tensor,
               labels: Tensor | None) -> Tensor:
        # BCE(sigmoid(l), 1) = softplus(-l); BCE(sigmoid(l), 0) = softplus(l)
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()

    def g_loss(self, fake_logits: Tensor) -> Tensor:
        return F.softplus(-fake_logits).mean()
