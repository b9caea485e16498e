"""Classic image augmentation: the random affine transforms (rotation, scale, translation, optional horizontal flip)
shared by the harness's evaluators and by the ``augment_shots`` baseline method.

Torch only, and apart from :mod:`harness.metrics` on purpose: methods may not import the metrics (the evaluator has
seen the novel classes), yet the ``augment_shots`` generator must apply exactly the transforms that the downstream-
accuracy metric's classic-augmentation baseline applies, so both import them from here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CLASSIC_AUG", "FLIP_DATASETS", "flips_fit", "random_affine"]

# the classic-augmentation baseline of the downstream accuracy (and the augment_shots method)
CLASSIC_AUG = {"rotate_degrees": 15.0, "scale": 0.1, "translate": 0.1}
FLIP_DATASETS = {"fashion_mnist", "celeba"}  # mirror images are still of the same class; digits are not


def flips_fit(dataset_name: str | None, setting: bool | None = None) -> bool:
    """Whether classic augmentation flips images: ``setting`` if given, else by dataset (not digits, not unknown
    image folders, not an unnamed dataset)."""
    return setting if setting is not None else dataset_name in FLIP_DATASETS


def random_affine(x: Tensor, generator: torch.Generator, rotate_degrees: float, scale: float, translate: float,
                  flip: bool = False) -> Tensor:
    """Per-image random rotation (±``rotate_degrees``), scale (1 ± ``scale``), translation (± ``translate`` of the
    size) and, if ``flip``, horizontal flips; random numbers from ``generator`` (CPU), applied on ``x``'s device."""
    n = x.shape[0]

    def uniform(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator) * 2 - 1

    angle = uniform(n) * math.radians(rotate_degrees)
    s = 1 + uniform(n) * scale
    shift = uniform(n, 2) * translate * 2  # affine_grid coordinates span [-1, 1] = 2 units per image side
    sx = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([
        torch.stack([cos * sx, -sin, shift[:, 0]], 1),
        torch.stack([sin * sx, cos, shift[:, 1]], 1),
    ], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
