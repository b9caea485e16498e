"""``EvaluationContext``: one trial's samples and what every metric computes from them, built on first use."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from harness.api import LabeledImages
    from harness.data import Dataset, FewShotSplit
    from harness.metrics.config import EvaluationConfig
    from harness.metrics.evaluator import DomainClassifierSettings, Evaluator
    from harness.metrics.reference import Reference


@dataclass(eq=False)
class EvaluationContext:
    """One trial's samples and everything the metrics compute from; the evaluator, the reference and the samples'
    (logits, features) are built on first use and then shared by every metric. Everything seeded comes from the
    split (``split.task.seed``) or from fixed metric seeds, so the context needs no trial spec."""

    config: EvaluationConfig
    dataset: Dataset
    split: FewShotSplit
    samples: LabeledImages
    device: torch.device
    cache_root: str | Path | None = None
    evaluator_settings: DomainClassifierSettings | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(self.split.task.novel_classes)

    @cached_property
    def evaluator(self) -> Evaluator:
        from harness.metrics.evaluator import get_evaluator

        evaluator = get_evaluator(self.config, self.dataset, self.device, cache_root=self.cache_root,
                                  settings=self.evaluator_settings)
        self.provenance.update(evaluator.provenance())
        return evaluator

    @cached_property
    def reference(self) -> Reference:
        from harness.metrics.reference import get_reference

        reference = get_reference(self.split, self.evaluator, cache_root=self.cache_root)
        self.provenance.update(reference_cache=reference.cache_status, reference_key=reference.key)
        return reference

    @cached_property
    def _extracted(self) -> tuple[Tensor, Tensor]:
        return self.evaluator.extract(self.samples.images)

    @property
    def logits(self) -> Tensor:
        return self._extracted[0]

    @property
    def features(self) -> Tensor:
        return self._extracted[1]

    def sample_mask(self, label: int | None) -> Tensor:
        labels = self.samples.labels
        return torch.ones_like(labels, dtype=torch.bool) if label is None else labels == label

    def class_images(self, label: int) -> tuple[Tensor, Tensor, Tensor]:
        """Class ``label``'s samples, held-out real images and shots (pixels, float in [0, 1])."""
        return (self.samples.images[self.sample_mask(label)], self.split.heldout.of_class(label).images,
                self.split.task.novel.of_class(label).images)

    def groups(self) -> list[int | None]:
        """Every novel class, then None (pooled)."""
        return [*self.classes, None]
