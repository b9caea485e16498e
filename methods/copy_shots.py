"""copy_shots: the generator that replays its training images — the floor every few-shot generator is read against.

Its samples are the k shots of the requested class, drawn uniformly with replacement: exact copies. Whatever a
metric gives it is what simply reproducing the training images scores, so a method that does not beat it on FID
is reproducing its shots, however it got there (its memorisation says how close the copies are). There is no paper
to follow: the baseline is defined by the benchmark (issue #18).

``fit`` stores the novel shots and nothing else: the base classes are never read, and the held-out images never
reach a method. The shots are the state, so a restored instance samples without the task.
"""

from __future__ import annotations

from typing import Any

import pydantic
import torch
from torch import Tensor

from harness.api import Budget, FewShotTask, FitHooks, GenerativeMethod, TrialDiverged
from methods.state import check_state_header, state_header

__all__ = ["CopyShots", "CopyShotsConfig"]


class CopyShotsConfig(pydantic.BaseModel):
    """No settings: the samples are the shots themselves."""

    model_config = pydantic.ConfigDict(extra="forbid")


class CopyShots(GenerativeMethod):
    """Stores the shots in ``fit``; ``sample(labels)`` draws, for each requested label, one of that class's shots
    uniformly with replacement from ``generator``.

    There is nothing to optimise, but the harness counts generator steps (resume, logging), so ``fit`` still reports
    each step of its budget through ``hooks.step_end`` — a suite gives these baselines ``budget: {steps: 1}``. The
    logged value ``stored_images`` is not a loss: it is how many images the method holds (the k shots of every novel
    class; every training image of them under ``data: full``).
    """

    name = "copy_shots"
    Config = CopyShotsConfig
    conditional = True
    description = "baseline: samples are the k shots of the requested class, drawn uniformly with replacement"

    def __init__(self, config: pydantic.BaseModel, image_shape: tuple[int, int, int], num_classes: int,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(config, image_shape, num_classes, device)
        self.step = 0
        self.images = torch.zeros((0, *self.image_shape), device=self.device)
        self.labels = torch.zeros(0, dtype=torch.long, device=self.device)

    def store(self, task: FewShotTask) -> None:
        """Keep the novel shots (copies, so the task's tensors may change afterwards). Subclasses add what they
        derive from the task."""
        if not torch.isfinite(task.novel.images).all():
            raise TrialDiverged(f"{self.name}: the shots have non-finite pixels; there is nothing to copy")
        self.images = task.novel.images.to(self.device, torch.float32).clone()
        self.labels = task.novel.labels.to(self.device, torch.long).clone()

    def fit(self, task: FewShotTask, budget: Budget, hooks: FitHooks) -> None:
        self.store(task)
        for step in range(self.step, budget.steps):
            self.step = step + 1
            hooks.step_end(step, {"stored_images": float(len(self.labels))})

    def draw_shots(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """One stored image per entry of ``labels``: for each class (in ascending order), ``torch.randint`` picks
        among its shots from ``generator``."""
        out = torch.empty((len(labels), *self.image_shape), device=self.device)
        labels = labels.to(self.device)
        for label in torch.unique(labels).tolist():
            pool = torch.nonzero(self.labels == label).flatten()
            if len(pool) == 0:
                raise KeyError(f"{self.name}: no shots of class {label} were stored (fit first)")
            mask = labels == label
            pick = torch.randint(len(pool), (int(mask.sum()),), generator=generator, device=generator.device)
            out[mask] = self.images[pool[pick.to(pool.device)]]
        return out

    def sample(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        return self.draw_shots(labels, generator)

    def state_dict(self) -> dict[str, Any]:
        return {**state_header(self), "images": self.images.clone(), "labels": self.labels.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_header(self, state)
        self.step = int(state["step"])
        self.images = state["images"].to(self.device).clone()
        self.labels = state["labels"].to(self.device).clone()
