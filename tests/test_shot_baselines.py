"""The copy_shots and augment_shots baselines: copies are exactly shots, drawn uniformly; augmented samples are the
accuracy baseline's transforms of shots and never held-out images; the flip rule is the accuracy baseline's.
(The method contract -- steps, state, resume, seeds -- is tests/test_method_contract.py's.)"""

from __future__ import annotations

import torch

from harness import augment
from harness.api import Budget, FewShotTask, LabeledImages, NullHooks
from harness.data import make_split
from harness.data.dataset import Dataset
from harness.data.info import DatasetInfo
from harness.metrics import accuracy
from methods.augment_shots import AugmentShots
from methods.copy_shots import CopyShots

SHAPE = (1, 12, 12)


def _task(dataset_name: str | None = None, shots: int = 3) -> FewShotTask:
    g = torch.Generator().manual_seed(0)
    novel = LabeledImages(torch.rand(2 * shots, *SHAPE, generator=g), torch.tensor([3, 4] * shots))
    base = LabeledImages(torch.rand(4, *SHAPE, generator=g), torch.tensor([0, 1, 0, 1]))
    return FewShotTask(base, novel, (0, 1), (3, 4), SHAPE, seed=0, dataset_name=dataset_name)


def _fitted(cls, task: FewShotTask, **config):
    method = cls(cls.Config(**config), SHAPE, 5, "cpu")
    method.fit(task, Budget(steps=1), NullHooks())
    return method


def test_copy_shots_samples_are_exactly_the_shots_of_their_class_drawn_uniformly():
    task = _task()
    method = _fitted(CopyShots, task)
    labels = torch.tensor([3, 4] * 600)
    x = method.sample(labels, torch.Generator().manual_seed(1))
    shots = task.novel.images.flatten(1)
    match = (x.flatten(1)[:, None, :] == shots[None]).all(-1)  # sample i is shot j, pixel for pixel
    assert match.any(1).all(), "a sample that is not a shot"
    source = match.float().argmax(1)
    assert torch.equal(task.novel.labels[source], labels)  # the shot is of the requested class
    counts = torch.bincount(source, minlength=len(shots)).float()  # 3 shots per class, 600 draws: ~200 each
    assert counts.min() > 150 and counts.max() < 250, counts


def test_augment_shots_applies_the_accuracy_baselines_transforms_to_drawn_shots():
    assert accuracy.random_affine is augment.random_affine and accuracy.CLASSIC_AUG is augment.CLASSIC_AUG
    task = _task("fashion_mnist")
    method, copies = _fitted(AugmentShots, task), _fitted(CopyShots, task)
    labels = torch.tensor([4, 3, 3, 4, 4])
    x = method.sample(labels, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same stream: shots first, then the transforms
    expected = augment.random_affine(copies.sample(labels, g), g, flip=True, **augment.CLASSIC_AUG)
    assert torch.equal(x, expected)
    assert not torch.equal(x, copies.sample(labels, torch.Generator().manual_seed(5)))  # they are transformed
    assert x.min() >= 0 and x.max() <= 1


def test_the_flip_follows_the_accuracy_baselines_rule_and_is_kept_in_the_state():
    assert _fitted(AugmentShots, _task("fashion_mnist")).flip is True
    assert _fitted(AugmentShots, _task("mnist")).flip is False
    assert _fitted(AugmentShots, _task(None)).flip is False  # an unnamed dataset: no flips, as for unknown folders
    assert _fitted(AugmentShots, _task("mnist"), flip=True).flip is True  # the config wins
    fitted = _fitted(AugmentShots, _task("celeba"))
    restored = AugmentShots(AugmentShots.Config(), SHAPE, 5, "cpu")
    restored.load_state_dict(fitted.state_dict())  # no task: the state is enough
    labels = torch.tensor([3, 4] * 4)
    assert restored.flip is True
    assert torch.equal(restored.sample(labels, torch.Generator().manual_seed(2)),
                       fitted.sample(labels, torch.Generator().manual_seed(2)))


def _bright_test_dataset() -> Dataset:
    """Training images with pixels in [0, 0.5], test images all 1: a sample built from a test image would show it."""
    g = torch.Generator().manual_seed(3)
    train_labels, test_labels = torch.arange(4).repeat_interleave(6), torch.arange(4).repeat_interleave(3)
    train = LabeledImages(torch.rand(24, *SHAPE, generator=g) * 0.5, train_labels)
    test = LabeledImages(torch.ones(12, *SHAPE), test_labels)
    info = DatasetInfo("mnist", 4, ("0", "1", "2", "3"), SHAPE, {c: 6 for c in range(4)}, {c: 3 for c in range(4)},
                       "embedded")
    return Dataset(train, test, info, "test", "fingerprint")


def test_samples_come_from_the_task_s_shots_and_never_from_held_out_images():
    dataset = _bright_test_dataset()
    split = make_split(dataset, [0, 1], [2, 3], shots=2, seed=0)
    labels = torch.tensor([2, 3] * 50)
    copies = _fitted(CopyShots, split.task).sample(labels, torch.Generator().manual_seed(0))
    augmented = _fitted(AugmentShots, split.task).sample(labels, torch.Generator().manual_seed(0))
    shots = {bytes(x.numpy().tobytes()) for x in split.task.novel.images}
    base = {bytes(x.numpy().tobytes()) for x in split.task.base.images}
    assert {bytes(x.numpy().tobytes()) for x in copies} <= shots and not shots & base
    # bilinear resampling with zero padding mixes a shot's pixels and zeros: never above the shot's brightest pixel
    assert augmented.max() <= split.task.novel.images.max() < split.heldout.images.min() == 1
