"""Static dataset metadata, available without decoding any image (for suite validation)."""

from __future__ import annotations

import difflib
import numbers
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.data.base import DatasetConfigBase

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
    ``aliases`` are further names of classes (name -> id) the dataset's reader accepts, e.g. MNIST's "seven".
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    train_per_class: dict[int, int] | None
    test_per_class: dict[int, int] | None
    source: str
    aliases: dict[str, int] = field(default_factory=dict, repr=False)

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
        for alias, i in self.aliases.items():
            add(alias, i)
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


def dataset_info(cfg: DatasetConfigBase) -> DatasetInfo:
    """Metadata of the dataset ``cfg`` describes, without decoding images: its registered reader's ``info``
    (see :mod:`harness.data.readers` for what each reports)."""
    from harness.registry import DATASETS

    return DATASETS.get(cfg.name).info(cfg)
