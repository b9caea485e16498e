"""Few-shot splits: what a method sees (:class:`FewShotTask`) and what only the evaluator sees (held-out images).

Randomness (all ``numpy.random.default_rng``, so a split is a pure function of its arguments):

* shots of novel class ``c``: ``default_rng([seed, 0, c])`` draws ``shots`` of the class's training images without
  replacement. Each class has its own stream, so the shots of a class do not depend on which other classes are novel
  or on the order the classes are listed in;
* base cap (``base_images_per_class``): ``default_rng([seed, 1, c])`` picks the kept training images of base class c;
* evaluation cap (``eval_images_per_class``): ``default_rng([0, 2, c])`` picks the held-out test images -- the same for
  every seed on purpose, so seeds differ in shots and training only, not in the evaluation images.

``data="full"`` (an oracle reference, not a few-shot trial) gives the method every training image of the novel
classes instead of ``shots`` of them; nothing else changes, so the held-out images are the few-shot trials' own.

Chosen indices are kept in ascending dataset order. Held-out images come from the dataset's TEST split and shots
from its TRAIN split, so no held-out image can be a shot.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from harness.api import FewShotTask, LabeledImages
from harness.data.dataset import Dataset

__all__ = ["DATA_CHOICES", "FewShotSplit", "make_split"]

DATA_CHOICES = ("few", "full")  # `shots` images of each novel class, or all its training images (a reference)

SPLIT_HASH_VERSION = 1
EVAL_SEED = 0
_SHOTS, _BASE, _EVAL = 0, 1, 2


@dataclass(frozen=True, eq=False, repr=False)
class FewShotSplit:
    """A few-shot task plus the evaluator's held-out data.

    ``task`` is all a method may see. ``heldout`` are test images of the novel classes and ``heldout_base`` test
    images of the base classes (empty without base classes); neither may reach a method. ``shot_indices[c]`` are the
    indices into ``dataset.train`` of class ``c``'s shots. ``split_hash`` identifies the split: sha256 over the
    dataset fingerprint, the classes, shots, seed, caps and every chosen index. ``heldout_train_indices``: the indices
    into ``dataset.train`` of the held-out images when they are training images (a selection trial), else empty — so
    that a metric fitting something to the training images of the novel classes can leave them out.
    """

    task: FewShotTask
    heldout: LabeledImages
    heldout_base: LabeledImages
    shot_indices: dict[int, list[int]]
    split_hash: str
    heldout_train_indices: tuple[int, ...] = ()

    def __repr__(self) -> str:
        t = self.task
        return (
            f"FewShotSplit(base={t.base_classes}, novel={t.novel_classes}, shots={t.shots}, seed={t.seed}, "
            f"base_images={len(t.base)}, heldout={len(self.heldout)}, heldout_base={len(self.heldout_base)}, "
            f"split_hash={self.split_hash[:12]}…)"
        )


def _classes(dataset: Dataset, classes: Sequence[int | str], what: str) -> list[int]:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise ValueError(f"{what}: expected a list of class ids or names, got {classes!r}")
    ids = [dataset.info.class_id(c) for c in classes]  # ValueError for unknown names / out-of-range ids
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise ValueError(f"{what}: classes {[dataset.info.class_names[c] for c in dupes]} are listed twice")
    return sorted(ids)


def _positive_int(value: object, what: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or int(value) < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _subset(images: LabeledImages, index: np.ndarray) -> LabeledImages:
    return images.subset(torch.as_tensor(index, dtype=torch.int64))


def _choose(indices: np.ndarray, n: int | None, entropy: list[int]) -> np.ndarray:
    """``n`` of ``indices`` at random (all if ``n`` is None or covers them), ascending."""
    if n is None or n >= len(indices):
        return indices
    return np.sort(np.random.default_rng(entropy).choice(indices, size=n, replace=False))


def make_split(
    dataset: Dataset,
    base_classes: Sequence[int | str],
    novel_classes: Sequence[int | str],
    shots: int,
    seed: int,
    eval_images_per_class: int | None = None,
    base_images_per_class: int | None = None,
    heldout_from: str = "test",
    data: str = "few",
) -> FewShotSplit:
    """Build the ``shots``-shot task for ``seed`` and its held-out evaluation data.

    ``heldout_from="train"`` (a selection trial: validation classes playing the novel role) holds out *training*
    images of the novel classes instead — ``eval_images_per_class`` of them, default half, the same for every seed —
    and draws the shots from the rest, so choosing a configuration never reads the test split.

    ``data="full"``: the novel classes' "shots" are all their training images (all those not held out, with
    ``heldout_from="train"``); ``shots`` is still checked against them but chooses nothing.

    base: all TRAIN images of ``base_classes`` (at most ``base_images_per_class`` each, picked by seed); novel:
    ``shots`` TRAIN images per novel class drawn by seed; heldout: the TEST images of the novel classes (at most
    ``eval_images_per_class`` each, the same for every seed). Classes may be given by id or name; labels keep the
    dataset's ids; the task's class tuples are sorted.

    Raises ValueError for unknown or repeated classes, overlapping base and novel classes, a novel class with fewer
    training images than ``shots``, or one with no test images (or fewer than ``eval_images_per_class``).
    """
    info = dataset.info
    base = _classes(dataset, base_classes, "base_classes")
    novel = _classes(dataset, novel_classes, "novel_classes")
    if not novel:
        raise ValueError("novel_classes: at least one novel class is needed")
    overlap = sorted(set(base) & set(novel))
    if overlap:
        raise ValueError(
            f"classes {[info.class_names[c] for c in overlap]} (ids {overlap}) are both base and novel; "
            "they must be disjoint"
        )
    shots = _positive_int(shots, "shots")
    eval_cap = _positive_int(eval_images_per_class, "eval_images_per_class", allow_none=True)
    base_cap = _positive_int(base_images_per_class, "base_images_per_class", allow_none=True)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)

    train_labels = dataset.train.labels.cpu().numpy()
    test_labels = dataset.test.labels.cpu().numpy()

    if heldout_from not in ("test", "train"):
        raise ValueError(f"heldout_from must be 'test' or 'train', got {heldout_from!r}")
    if data not in DATA_CHOICES:
        raise ValueError(f"data must be one of {', '.join(map(repr, DATA_CHOICES))}, got {data!r}")
    keep = None if data == "full" else shots  # how many of a class's available training images the method gets
    shot_indices: dict[int, list[int]] = {}
    heldout_idx: list[np.ndarray] = []
    for c in novel:
        name = info.class_names[c]
        available = np.flatnonzero(train_labels == c)
        if heldout_from == "train":
            held = _choose(available, eval_cap or len(available) // 2, [EVAL_SEED, _EVAL, c])
            if len(available) - len(held) < shots or len(held) == 0:
                raise ValueError(f"validation class {c} ({name!r}) has {len(available)} training images: too few "
                                 f"for {shots} shots and {len(held) or 'any'} held-out images")
            heldout_idx.append(held)
            shot_indices[c] = _choose(np.setdiff1d(available, held), keep, [seed, _SHOTS, c]).tolist()
            continue
        if len(available) < shots:
            raise ValueError(
                f"novel class {c} ({name!r}) has {len(available)} training images, fewer than shots={shots}"
            )
        shot_indices[c] = _choose(available, keep, [seed, _SHOTS, c]).tolist()
        test_available = np.flatnonzero(test_labels == c)
        if len(test_available) == 0:
            raise ValueError(f"novel class {c} ({name!r}) has no test images to hold out for evaluation")
        if eval_cap is not None and len(test_available) < eval_cap:
            raise ValueError(
                f"novel class {c} ({name!r}) has {len(test_available)} test images, fewer than "
                f"eval_images_per_class={eval_cap}"
            )
        heldout_idx.append(_choose(test_available, eval_cap, [EVAL_SEED, _EVAL, c]))

    base_idx: list[np.ndarray] = []
    heldout_base_idx: list[np.ndarray] = []
    for c in base:
        base_idx.append(_choose(np.flatnonzero(train_labels == c), base_cap, [seed, _BASE, c]))
        if heldout_from == "test":  # a selection trial reads no test image at all
            heldout_base_idx.append(_choose(np.flatnonzero(test_labels == c), eval_cap, [EVAL_SEED, _EVAL, c]))

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    novel_index = cat([np.asarray(shot_indices[c]) for c in novel])
    base_index, heldout_index, heldout_base_index = cat(base_idx), cat(heldout_idx), cat(heldout_base_idx)

    task = FewShotTask(
        base=_subset(dataset.train, base_index),
        novel=_subset(dataset.train, novel_index),
        base_classes=tuple(base),
        novel_classes=tuple(novel),
        image_shape=tuple(info.image_shape),
        seed=seed,
        dataset_name=info.name,
    )

    def digest(a: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(a, dtype="<i8").tobytes()).hexdigest()

    record = {
        "version": SPLIT_HASH_VERSION,
        "dataset": dataset.fingerprint,
        "base_classes": base,
        "novel_classes": novel,
        "shots": shots,
        "seed": seed,
        "eval_images_per_class": eval_cap,
        "base_images_per_class": base_cap,
        "shot_indices": {str(c): idx for c, idx in shot_indices.items()},
        "base_indices": digest(base_index),
        "heldout_indices": digest(heldout_index),
        "heldout_base_indices": digest(heldout_base_index),
    }
    if heldout_from == "train":  # only then: the hashes of every earlier split stay as they were
        record["heldout_from"] = "train"
    if data != "few":  # likewise
        record["data"] = data
    split_hash = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    heldout_source = dataset.train if heldout_from == "train" else dataset.test
    return FewShotSplit(
        task=task,
        heldout=_subset(heldout_source, heldout_index),
        heldout_base=_subset(dataset.test, heldout_base_index),
        shot_indices=shot_indices,
        split_hash=split_hash,
        heldout_train_indices=tuple(heldout_index.tolist()) if heldout_from == "train" else (),
    )
