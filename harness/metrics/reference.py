"""Reference features: the evaluator's view of a split's held-out real images (and of its k shots), extracted once.

A :class:`Reference` is keyed by (split hash, evaluator hash): evaluating the many trials of one suite that share a
split extracts the held-out features once per process (memory) and once per machine (disk, ``references/<key>.pt``).
Everything derived from the real images alone (FID statistics, the real-vs-real FID floor, the real IS, the held-out
images' nearest-shot distances) is memoised on the object.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from harness.metrics.cache import cache_dir, read_tensors, stable_hash, write_tensors

if TYPE_CHECKING:
    from harness.data import FewShotSplit
    from harness.metrics.evaluator import Evaluator

REFERENCE_VERSION = 1
HALVES_SEED = 0
MEMORY_ENTRIES = 16


@dataclass(eq=False)
class Reference:
    """Held-out real logits/features (``labels`` give the class of each row) and the k shots' features."""

    key: str
    labels: Tensor
    logits: Tensor
    features: Tensor
    shot_labels: Tensor
    shot_features: Tensor
    cache_status: str = "miss"
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    def _cached(self, key: Any, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def mask(self, label: int | None) -> Tensor:
        return torch.ones_like(self.labels, dtype=torch.bool) if label is None else self.labels == label

    def class_features(self, label: int | None) -> Tensor:
        return self.features[self.mask(label)]

    def fid_statistics(self, label: int | None) -> dict[str, np.ndarray]:
        from harness.metrics.fidelity import fid_statistics

        return self._cached(("fid_stats", label), lambda: fid_statistics(self.class_features(label)))

    def halves(self, label: int | None) -> tuple[Tensor, Tensor]:
        """Two disjoint, equally large halves of the held-out images (of ``label``, or of every class: stratified,
        so both halves have the same class mix), drawn with a fixed seed."""

        def compute() -> tuple[Tensor, Tensor]:
            first, second = [], []
            classes = sorted(set(self.labels.tolist())) if label is None else [label]
            for c in classes:
                index = torch.nonzero(self.labels == c).flatten().numpy()
                perm = np.random.default_rng([HALVES_SEED, c]).permutation(index)
                half = len(perm) // 2
                first.append(perm[:half])
                second.append(perm[half:2 * half])
            return torch.as_tensor(np.concatenate(first)), torch.as_tensor(np.concatenate(second))

        return self._cached(("halves", label), compute)

    def fid_floor(self, label: int | None) -> float:
        """FID between the two halves: what a perfect generator could reach with this few real images."""
        from harness.metrics.fidelity import fid

        def compute() -> float:
            a, b = self.halves(label)
            return fid(self.features[a], self.features[b]) if len(a) >= 2 else math.nan

        return self._cached(("fid_floor", label), compute)

    def inception_score(self, splits: int, seed: int) -> tuple[float, float]:
        from harness.metrics.fidelity import inception_score

        return self._cached(("is", splits, seed), lambda: inception_score(self.logits, splits, seed))

    def shot_distances(self, label: int) -> Tensor:
        """Distance of each held-out image of ``label`` to its nearest shot of ``label`` (evaluator features)."""
        from harness.metrics.memorisation import nearest_distances

        return self._cached(("shot_dist", label), lambda: nearest_distances(
            self.class_features(label), self.shot_features[self.shot_labels == label]))

    def tensors(self) -> dict[str, Any]:
        return {"key": self.key, "version": REFERENCE_VERSION, "labels": self.labels, "logits": self.logits,
                "features": self.features, "shot_labels": self.shot_labels, "shot_features": self.shot_features}


_MEMORY: OrderedDict[str, Reference] = OrderedDict()


def clear_memory_cache() -> None:
    """Forget the references held in this process (the disk cache stays)."""
    _MEMORY.clear()


def reference_key(split: FewShotSplit, evaluator: Evaluator) -> str:
    return stable_hash({"version": REFERENCE_VERSION, "split": split.split_hash, "evaluator": evaluator.hash})


def get_reference(split: FewShotSplit, evaluator: Evaluator, *, cache_root: str | Path | None = None,
                  use_disk: bool = True) -> Reference:
    """The reference of ``split`` under ``evaluator``: from memory, else from disk, else extracted (and saved).

    ``cache_status`` tells which: ``memory``, ``disk`` or ``miss``.
    """
    key = reference_key(split, evaluator)
    memo_key = f"{key}@{cache_dir('references', cache_root)}"
    if memo_key in _MEMORY:
        _MEMORY.move_to_end(memo_key)
        reference = _MEMORY[memo_key]
        reference.cache_status = "memory"
        return reference
    path = cache_dir("references", cache_root) / f"{key[:32]}.pt"
    stored = read_tensors(path) if use_disk else None
    if stored is not None and stored.get("key") == key and stored.get("version") == REFERENCE_VERSION:
        reference = Reference(key, stored["labels"], stored["logits"], stored["features"], stored["shot_labels"],
                              stored["shot_features"], cache_status="disk")
    else:
        logits, features = evaluator.extract(split.heldout.images)
        _, shot_features = evaluator.extract(split.task.novel.images)
        reference = Reference(key, split.heldout.labels.cpu().clone(), logits, features,
                              split.task.novel.labels.cpu().clone(), shot_features, cache_status="miss")
        if use_disk:
            write_tensors(path, reference.tensors())
    _MEMORY[memo_key] = reference
    while len(_MEMORY) > MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)
    return reference
