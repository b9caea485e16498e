"""augment_shots: classic augmentation of the shots as a generator — what a few-shot generator must beat to be worth
more than the transforms a classifier would apply anyway.

Each sample is one shot of the requested class, drawn uniformly with replacement (as :mod:`methods.copy_shots`
draws it), under a random affine transform: the very transforms of the downstream-accuracy metric's
classic-augmentation baseline (:data:`harness.augment.CLASSIC_AUG` through :func:`harness.augment.random_affine`:
rotation ±15°, scale 1 ± 0.1, translation ± 0.1 of the size, zero padding), with horizontal flips under the same
rule (:func:`harness.augment.flips_fit`). The transforms are not settings of this method on purpose: the baseline
is "what the accuracy baseline does", and it would stop being that if they could differ.
"""

from __future__ import annotations

from typing import Any

import pydantic
import torch
from torch import Tensor

from harness.api import FewShotTask
from harness.augment import CLASSIC_AUG, flips_fit, random_affine
from methods.copy_shots import CopyShots

__all__ = ["AugmentShots", "AugmentShotsConfig"]


class AugmentShotsConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    flip: bool | None = pydantic.Field(
        None, description="horizontal flips; default: as the accuracy baseline decides for the task's dataset "
        "(fashion_mnist and celeba flip, digits and unnamed or unknown datasets do not)",
    )


class AugmentShots(CopyShots):
    """:class:`~methods.copy_shots.CopyShots` with every drawn shot transformed.

    ``flip`` is resolved once, in ``fit``, from the config or else from ``task.dataset_name`` (the accuracy
    baseline's rule), and kept in the state, so a restored instance samples the same way without the task.
    Randomness: shots and transforms come from ``generator``; :func:`~harness.augment.random_affine` draws on the
    CPU, so a generator on another device seeds a CPU generator from one draw of its own.
    """

    name = "augment_shots"
    Config = AugmentShotsConfig
    description = ("baseline: the k shots under the accuracy baseline's classic augmentation (random rotation, scale, "
                   "translation; flips where they fit the data)")

    def __init__(self, config: pydantic.BaseModel, image_shape: tuple[int, int, int], num_classes: int,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(config, image_shape, num_classes, device)
        self.flip = bool(self.config.flip)

    def store(self, task: FewShotTask) -> None:
        super().store(task)
        self.flip = flips_fit(task.dataset_name, self.config.flip)

    def sample(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        shots = self.draw_shots(labels, generator)
        if generator.device.type != "cpu":
            seed = torch.randint(2**62, (1,), generator=generator, device=generator.device)
            generator = torch.Generator().manual_seed(int(seed))
        return random_affine(shots, generator, flip=self.flip, **CLASSIC_AUG)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "flip": self.flip}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.flip = bool(state["flip"])
