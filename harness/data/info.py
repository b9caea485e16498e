"""Static dataset metadata, available without decoding any image (for suite validation)."""

from __future__ import annotations

import difflib
import numbers
import re
from dataclasses import dataclass

from harness.data import sources as S
from harness.data.config import DatasetConfig

__all__ = ["DatasetInfo", "dataset_info"]


def _norm(name: str) -> str:
    """Case-, space-, dash- and underscore-insensitive form of a class name ("Ankle boot" == "ankle_boot")."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a dataset before loading it.

    ``class_names[i]`` is the name of label ``i``. ``image_shape`` is C×H×W after the config's ``image_size`` and
    ``channels``. ``train_per_class``/``test_per_class`` give, per class id, the number of images the configured source
    guarantees (already capped by ``max_images_per_class``), or ``None`` when that is unknown without loading. On a
    loaded :class:`~harness.data.dataset.Dataset` they are the counts actually loaded. ``source`` is the source the
    config asks for (``auto``, ``torchvision`` or ``embedded``); the one actually used is ``Dataset.source``.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    train_per_class: dict[int, int] | None
    test_per_class: dict[int, int] | None
    source: str

    def _aliases(self) -> dict[str, int]:
        """Normalised name → id. Full names always win; parts ("t-shirt" of "T-shirt/top", "zero" of MNIST's "0")
        are added only where they are unambiguous."""
        full = {_norm(n): i for i, n in enumerate(self.class_names)}
        extra: dict[str, set[int]] = {}

        def add(alias: str, i: int) -> None:
            key = _norm(alias)
            if key and key not in full:
                extra.setdefault(key, set()).add(i)

        for i, n in enumerate(self.class_names):
            for part in re.split(r"[/,]| - ", n):
                add(part, i)
            if self.name == "mnist" and i < len(S.MNIST_WORDS):
                add(S.MNIST_WORDS[i], i)
                add(f"{i} - {S.MNIST_WORDS[i]}", i)  # torchvision's spelling
        return {**{k: next(iter(v)) for k, v in extra.items() if len(v) == 1}, **full}

    def class_id(self, name_or_id: int | str) -> int:
        """The id of a class given by id or by name (case-insensitive; spaces, '-' and '_' ignored)."""
        if isinstance(name_or_id, numbers.Integral) and not isinstance(name_or_id, bool):
            i = int(name_or_id)
            if not 0 <= i < self.num_classes:
                raise ValueError(
                    f"class id {i} is out of range for {self.name} ({self.num_classes} classes: "
                    f"ids 0..{self.num_classes - 1} = {', '.join(map(repr, self.class_names))})"
                )
            return i
        if not isinstance(name_or_id, str):
            raise ValueError(f"a class is an id (int) or a name (str), not {type(name_or_id).__name__} {name_or_id!r}")
        aliases = self._aliases()
        key = _norm(name_or_id)
        if key in aliases:
            return aliases[key]
        close = difflib.get_close_matches(key, list(aliases), n=3, cutoff=0.6)
        suggestions = list(dict.fromkeys(self.class_names[aliases[c]] for c in close))
        hint = f"; did you mean {' or '.join(map(repr, suggestions))}?" if suggestions else ""
        raise ValueError(
            f"unknown class {name_or_id!r} for {self.name}{hint} Valid names: {', '.join(map(repr, self.class_names))} "
            f"(or ids 0..{self.num_classes - 1})"
        )


def _per_class(counts: list[int] | tuple[int, ...], cap: int | None) -> dict[int, int]:
    return {i: (min(n, cap) if cap is not None else n) for i, n in enumerate(counts)}


def dataset_info(cfg: DatasetConfig) -> DatasetInfo:
    """Metadata of the dataset ``cfg`` describes, without decoding images.

    mnist reports the official torchvision counts for ``source: torchvision``/``auto`` and 400/100 per class for
    ``embedded``; fashion_mnist 6000/1000; celeba reads the two annotation files when present (else ``None`` counts);
    image_folder lists the folder (raising :class:`DataSourceError` if it is missing) and opens image headers only when
    ``channels`` is not set.
    """
    cap = cfg.max_images_per_class
    if cfg.name in ("mnist", "fashion_mnist"):
        size = cfg.image_size or S.MNIST_NATIVE_SIZE
        shape = (cfg.channels or 1, size, size)
        if cfg.name == "fashion_mnist":
            from torchvision.datasets import FashionMNIST

            names = tuple(FashionMNIST.classes)
            train, test = [S.FASHION_TRAIN_PER_CLASS] * 10, [S.FASHION_TEST_PER_CLASS] * 10
        elif cfg.source == "embedded":
            names = S.MNIST_CLASSES
            train, test = [S.EMBEDDED_TRAIN_PER_CLASS] * 10, [S.EMBEDDED_TEST_PER_CLASS] * 10
        else:  # torchvision, or auto (which prefers torchvision)
            names = S.MNIST_CLASSES
            train, test = list(S.MNIST_TRAIN_COUNTS), list(S.MNIST_TEST_COUNTS)
        return DatasetInfo(
            cfg.name, len(names), names, shape, _per_class(train, cap), _per_class(test, cap), cfg.source
        )

    if cfg.name == "celeba":
        size = cfg.image_size or S.CELEBA_DEFAULT_SIZE
        shape = (cfg.channels or 3, size, size)
        train_counts = test_counts = None
        folder = S.celeba_folder(cfg)
        if (folder / S.CELEBA_ATTR_FILE).is_file() and (folder / S.CELEBA_PARTITION_FILE).is_file():
            index = S.read_celeba_index(cfg, need_images=False)
            train_counts = _per_class(_count(index.train, 2), cap)
            test_counts = _per_class(_count(index.test, 2), cap)
        names = S.CELEBA_CLASSES
        return DatasetInfo(cfg.name, len(names), names, shape, train_counts, test_counts, cfg.source)

    if cfg.name == "image_folder":
        listing = S.list_image_folder(cfg)
        size = cfg.image_size or S.IMAGE_FOLDER_DEFAULT_SIZE
        shape = (S.image_folder_channels(cfg, listing), size, size)
        k = len(listing.class_names)
        return DatasetInfo(
            cfg.name, k, listing.class_names, shape,
            _per_class(_count(listing.train, k), cap), _per_class(_count(listing.test, k), cap), cfg.source,
        )
    raise ValueError(f"unknown dataset {cfg.name!r}")


def _count(entries: list, num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for _, label in entries:
        counts[label] += 1
    return counts
