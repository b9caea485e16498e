"""Downstream accuracy (GLICO's protocol, inductive): do generated samples help a classifier of the novel classes?

A small CNN is trained from scratch on the k shots of the novel classes — plus, in the evaluated arm, generated
samples (``generated_fraction`` of every batch, default half) — and tested on the held-out real images of those
classes. Two baselines use the same classifier, steps and seeds: ``real_only`` (shots alone) and ``classic_aug``
(shots with random rotation / scale / translation, i.e. random-crop-like shifts, plus horizontal flips only where
they fit the data: not for digits; the transforms live in :mod:`harness.augment`, shared with the ``augment_shots``
baseline method). Each arm runs ``seeds`` classifier seeds derived from the split's seed (the same seeds in every arm,
so the arms are paired); results are mean ± std over them. The baselines depend only on the split and the settings,
so they are computed once and cached (memory and ``baselines/<key>.json``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.api import LabeledImages
from harness.augment import CLASSIC_AUG, flips_fit, random_affine
from harness.metrics.cache import cache_dir, file_lock, read_json, stable_hash, write_json
from harness.runtime import derive_seed

if TYPE_CHECKING:
    from harness.data import FewShotSplit

ACCURACY_VERSION = 1


class DownstreamClassifier(nn.Module):
    """Two conv blocks (conv3×3-BN-ReLU-maxpool, ``width`` and 2·``width`` channels), 4×4 pooling, 64 hidden units."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
                                 nn.MaxPool2d(2))

        self.net = nn.Sequential(
            block(in_channels, width), block(width, 2 * width), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(2 * width * 16, 64), nn.ReLU(True), nn.Linear(64, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - 0.5) / 0.5)


def _index(labels: Tensor, classes: tuple[int, ...]) -> Tensor:
    lookup = torch.full((max(classes) + 1,), -1, dtype=torch.long)
    lookup[torch.as_tensor(classes)] = torch.arange(len(classes))
    out = lookup[labels.cpu()]
    if (out < 0).any():
        raise ValueError(f"labels outside the novel classes {classes}")
    return out


def train_and_test(
    shots: LabeledImages, test: LabeledImages, classes: tuple[int, ...], settings: Any, seed: int,
    device: torch.device | str = "cpu", *, generated: LabeledImages | None = None, augment: bool = False,
    flip: bool = False,
) -> float:
    """Accuracy on ``test`` of a classifier trained for ``settings.steps`` on ``shots`` (+ ``generated``)."""
    device = torch.device(device)
    x_real, y_real = shots.images.to(device), _index(shots.labels, classes).to(device)
    use_generated = generated is not None and len(generated) > 0 and settings.generated_fraction > 0
    if use_generated:
        x_gen, y_gen = generated.images.to(device), _index(generated.labels, classes).to(device)
        n_gen = max(1, min(settings.batch_size, round(settings.batch_size * settings.generated_fraction)))
    else:
        n_gen = 0
    n_real = settings.batch_size - n_gen  # 0 when generated_fraction is 1: samples only
    generator = torch.Generator().manual_seed(seed)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        net = DownstreamClassifier(shots.images.shape[1], len(classes), settings.width).to(device)
        optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
        net.train()
        for _ in range(settings.steps):
            i = torch.randint(len(x_real), (n_real,), generator=generator).to(device)
            x, y = x_real[i], y_real[i]
            if augment:
                x = random_affine(x, generator, flip=flip, **CLASSIC_AUG)
            if n_gen:
                j = torch.randint(len(x_gen), (n_gen,), generator=generator).to(device)
                x, y = torch.cat([x, x_gen[j]]), torch.cat([y, y_gen[j]])
            loss = F.cross_entropy(net(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    net.eval()
    y_test = _index(test.labels, classes)
    correct = 0
    with torch.no_grad():
        for xb, yb in zip(test.images.split(1000), y_test.split(1000)):
            correct += int((net(xb.to(device)).argmax(1).cpu() == yb).sum())
    return correct / max(1, len(test))


def classifier_seeds(split_seed: int, count: int) -> list[int]:
    return [derive_seed(split_seed, "downstream-accuracy", i) for i in range(count)]


@dataclass(frozen=True)
class AccuracyResult:
    accuracy: list[float]
    real_only: list[float]
    classic_aug: list[float]
    baseline_cache: str  # memory | disk | miss

    @staticmethod
    def mean_std(values: list[float]) -> tuple[float, float | None]:
        if not values:
            return math.nan, None
        t = torch.tensor(values, dtype=torch.float64)
        return float(t.mean()), float(t.std(unbiased=False)) if len(values) > 1 else 0.0


_BASELINES: dict[str, dict[str, list[float]]] = {}


def clear_memory_cache() -> None:
    _BASELINES.clear()


def baseline_key(split: FewShotSplit, settings: Any, flip: bool) -> str:
    fields = {k: v for k, v in settings.model_dump(mode="json").items() if k != "generated_fraction"}
    return stable_hash({"version": ACCURACY_VERSION, "split": split.split_hash, "settings": fields, "flip": flip,
                        "classic_aug": CLASSIC_AUG})


def baselines(split: FewShotSplit, settings: Any, dataset_name: str, device: torch.device | str = "cpu", *,
              cache_root: str | Path | None = None) -> tuple[dict[str, list[float]], str]:
    """(``{"real_only": [...], "classic_aug": [...]}`` per classifier seed, cache status)."""
    flip = flips_fit(dataset_name, settings.flips)
    key = baseline_key(split, settings, flip)
    memo_key = f"{key}@{cache_dir('baselines', cache_root)}"
    if memo_key in _BASELINES:
        return _BASELINES[memo_key], "memory"
    path = cache_dir("baselines", cache_root) / f"{key[:32]}.json"
    status = "disk"
    with file_lock(path.with_suffix(".lock")):
        stored = read_json(path)
        if stored is None or stored.get("key") != key:
            task, test = split.task, split.heldout
            seeds = classifier_seeds(task.seed, settings.seeds)
            stored = {
                "key": key,
                "real_only": [train_and_test(task.novel, test, task.novel_classes, settings, s, device)
                              for s in seeds],
                "classic_aug": [train_and_test(task.novel, test, task.novel_classes, settings, s, device,
                                               augment=True, flip=flip) for s in seeds],
            }
            write_json(path, stored)
            status = "miss"
    result = {"real_only": list(stored["real_only"]), "classic_aug": list(stored["classic_aug"])}
    _BASELINES[memo_key] = result
    return result, status


def downstream_accuracy(split: FewShotSplit, samples: LabeledImages, settings: Any, dataset_name: str,
                        device: torch.device | str = "cpu", *, cache_root: str | Path | None = None) -> AccuracyResult:
    """Accuracy with ``samples`` beside the (cached) real-only and classic-augmentation baselines."""
    task = split.task
    seeds = classifier_seeds(task.seed, settings.seeds)
    with_samples = [train_and_test(task.novel, split.heldout, task.novel_classes, settings, s, device,
                                   generated=samples) for s in seeds]
    base, status = baselines(split, settings, dataset_name, device, cache_root=cache_root)
    return AccuracyResult(with_samples, base["real_only"], base["classic_aug"], status)
