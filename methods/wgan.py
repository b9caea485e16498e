"""WGAN (Arjovsky, Chintala & Bottou 2017, "Wasserstein GAN"), Algorithm 1: weight clipping.

Unconditional: the harness fits one model per novel class on that class's k shots.
"""

from __future__ import annotations

import pydantic
import torch
from torch import Tensor

from methods.adversarial import AdversarialConfig, AdversarialMethod

__all__ = ["WGAN", "WGANConfig"]


class WGANConfig(AdversarialConfig):
    """Algorithm 1's defaults: RMSProp, α = 0.00005 for critic and generator, clipping c = 0.01, n_critic = 5
    (mini-batch m = 64 is the harness's Budget). RMSProp's other settings are not stated: PyTorch's defaults
    (smoothing 0.99, eps 1e-8, no momentum), as in the authors' code. The authors' code also runs 100 critic updates
    for the first 25 generator updates and every 500th; the paper does not, and neither do we."""

    model_config = pydantic.ConfigDict(extra="forbid")

    lr_g: float = pydantic.Field(5e-5, gt=0, description="generator RMSProp learning rate (paper: 0.00005)")
    lr_d: float = pydantic.Field(5e-5, gt=0, description="critic RMSProp learning rate (paper: 0.00005)")
    clip: float = pydantic.Field(0.01, gt=0, description="critic weights are clipped to [-clip, clip] (paper: 0.01)")
    n_critic: int = pydantic.Field(5, ge=1, description="critic updates per generator update (paper: 5)")


class WGAN(AdversarialMethod):
    """WGAN with weight clipping: the critic maximises ``E[D(x)] - E[D(G(z))]``, the generator minimises
    ``-E[D(G(z))]``; after every critic update all its parameters (batch-norm ones included, as in the authors' code)
    are clamped to ``[-clip, clip]``. The paper's DCGAN experiments keep batch norm in the critic; so do we."""

    name = "wgan"
    Config = WGANConfig
    conditional = False
    description = "WGAN with weight clipping (Arjovsky et al. 2017), one model per novel class on its k shots"

    def make_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        return (torch.optim.RMSprop(self.G.parameters(), lr=self.config.lr_g),
                torch.optim.RMSprop(self.D.parameters(), lr=self.config.lr_d))

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor, real: Tensor, fake: Tensor,
               labels: Tensor | None) -> Tensor:
        return fake_logits.mean() - real_logits.mean()

    def g_loss(self, fake_logits: Tensor) -> Tensor:
        return -fake_logits.mean()

    @torch.no_grad()
    def after_d_step(self) -> None:
        c = self.config.clip
        for p in self.D.parameters():
            p.clamp_(-c, c)
