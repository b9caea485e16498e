"""DiffAugment: differentiable augmentation of both real and generated images before the discriminator.

Zhao, Liu, Lin, Zhu & Han (2020), "Differentiable Augmentation for Data-Efficient GAN Training". The maths follows the
authors' PyTorch implementation (``DiffAugment_pytorch.py``), which works on images in [-1, 1]:

* ``color``: brightness ``x + U(-0.5, 0.5)``; saturation ``(x - mean_c) * U(0, 2) + mean_c``; contrast
  ``(x - mean_chw) * U(0.5, 1.5) + mean_chw`` — one draw per image each.
* ``translation``: shift by up to ``ratio = 1/8`` of the side (rounded) in each direction, filling with zeros.
* ``cutout``: zero a square of ``ratio = 1/2`` of the side at a random centre (clipped at the borders).

Each call draws fresh parameters per image; a method applies the same *policy* to real and fake batches (and in the
generator's step), not the same draws. Saturation of a one-channel image is the identity (the channel mean is the
pixel itself), so it is skipped there without drawing random numbers. All draws come from ``generator`` when given
(it must live on the images' device), which makes the augmentation reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AUGMENTATIONS",
    "diff_augment",
    "parse_policy",
    "rand_brightness",
    "rand_contrast",
    "rand_cutout",
    "rand_saturation",
    "rand_translation",
]


def _uniform(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """One U(0, 1) number per image, shaped to broadcast over C×H×W."""
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device, generator=generator)


def rand_brightness(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return x + (_uniform(x, generator) - 0.5)


def rand_saturation(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    if x.shape[1] == 1:
        return x  # the identity for one channel: x - mean_c == 0
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_uniform(x, generator) * 2) + mean


def rand_contrast(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_uniform(x, generator) + 0.5) + mean


def rand_translation(x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.125) -> Tensor:
    n, _, h, w = x.shape
    shift_h, shift_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-shift_h, shift_h + 1, (n, 1, 1), device=x.device, generator=generator)
    dx = torch.randint(-shift_w, shift_w + 1, (n, 1, 1), device=x.device, generator=generator)
    batch, rows, cols = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(h, device=x.device), torch.arange(w, device=x.device),
        indexing="ij",
    )
    # index into the image padded by one zero pixel on every side: out-of-range sources land on the padding
    rows = torch.clamp(rows + dy + 1, 0, h + 1)
    cols = torch.clamp(cols + dx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def rand_cutout(x: Tensor, generator: torch.Generator | None = None, ratio: float = 0.5) -> Tensor:
    n, _, h, w = x.shape
    size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    off_h = torch.randint(0, h + (1 - size_h % 2), (n, 1, 1), device=x.device, generator=generator)
    off_w = torch.randint(0, w + (1 - size_w % 2), (n, 1, 1), device=x.device, generator=generator)
    batch, rows, cols = torch.meshgrid(
        torch.arange(n, device=x.device), torch.arange(size_h, device=x.device),
        torch.arange(size_w, device=x.device), indexing="ij",
    )
    rows = torch.clamp(rows + off_h - size_h // 2, 0, h - 1)
    cols = torch.clamp(cols + off_w - size_w // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[batch, rows, cols] = 0
    return x * mask.unsqueeze(1)


Augmentation = Callable[[Tensor, "torch.Generator | None"], Tensor]

AUGMENTATIONS: dict[str, tuple[Augmentation, ...]] = {
    "color": (rand_brightness, rand_saturation, rand_contrast),
    "translation": (rand_translation,),
    "cutout": (rand_cutout,),
}


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"color,translation"`` → ``("color", "translation")``; raises ``ValueError`` on unknown names."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in names if p not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {unknown}; known: {sorted(AUGMENTATIONS)}")
    return names


def diff_augment(x: Tensor, policy: str = "color,translation,cutout",
                 generator: torch.Generator | None = None) -> Tensor:
    """Augment a batch ``x`` (N×C×H×W, in [-1, 1]) differentiably; an empty policy returns ``x`` unchanged."""
    names = parse_policy(policy)
    for name in names:
        for fn in AUGMENTATIONS[name]:
            x = fn(x, generator)
    return x.contiguous() if names else x
