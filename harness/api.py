"""The method interface and the value types that cross module boundaries.

Everything a method may see is in :class:`FewShotTask`; the held-out evaluation images of the novel classes live
elsewhere (:class:`harness.data.split.FewShotSplit`) and never reach ``fit``. ``methods/`` imports this module and
torch only.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import pydantic
import torch
from torch import Tensor

__all__ = [
    "Budget",
    "FewShotTask",
    "FitHooks",
    "GenerativeMethod",
    "LabeledImages",
    "Losses",
    "NullHooks",
    "TrialDiverged",
    "loss_values",
]


@dataclass(frozen=True)
class LabeledImages:
    """Images as one in-memory tensor (float32 in [0, 1], N×C×H×W) with integer labels (N,).

    Kept as tensors so that training samples batches by indexing: no per-step DataLoader overhead.
    """

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be N×C×H×W, got shape {tuple(self.images.shape)}")
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(int(c) for c in torch.unique(self.labels).tolist())

    def of_class(self, label: int) -> LabeledImages:
        mask = self.labels == label
        return LabeledImages(self.images[mask], self.labels[mask])

    def subset(self, index: Tensor) -> LabeledImages:
        return LabeledImages(self.images[index], self.labels[index])

    def to(self, device: torch.device | str) -> LabeledImages:
        return LabeledImages(self.images.to(device), self.labels.to(device))

    @staticmethod
    def concat(parts: list[LabeledImages]) -> LabeledImages:
        return LabeledImages(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


@dataclass(frozen=True)
class FewShotTask:
    """What a method may see: all base-class training images and ``k`` shots per novel class (every training image
    of the novel classes in a ``data: full`` reference trial).

    ``dataset_name`` is the registered name of the dataset the images come from (None when they come from nowhere
    named, e.g. a test's random tensors): a fact, not data, for choices that depend on the kind of images -- e.g.
    whether a mirror image is still of its class (:func:`harness.augment.flips_fit`)."""

    base: LabeledImages
    novel: LabeledImages
    base_classes: tuple[int, ...]
    novel_classes: tuple[int, ...]
    image_shape: tuple[int, int, int]
    seed: int
    dataset_name: str | None = None

    @property
    def shots(self) -> int:
        """Images per novel class (the ``k`` of k-shot)."""
        return len(self.novel) // len(self.novel_classes) if self.novel_classes else 0

    def __len__(self) -> int:
        return len(self.base) + len(self.novel)

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(sorted(self.base_classes + self.novel_classes))

    def support(self, label: int) -> LabeledImages:
        """All images the method has of class ``label`` (its support set)."""
        source = self.novel if label in self.novel_classes else self.base
        return source.of_class(label)

    def to(self, device: torch.device | str) -> FewShotTask:
        return FewShotTask(
            self.base.to(device), self.novel.to(device), self.base_classes, self.novel_classes,
            self.image_shape, self.seed, self.dataset_name,
        )


class Budget(pydantic.BaseModel):
    """How much optimisation one fitted model gets.

    ``steps`` counts generator updates (one "iteration" of the papers' algorithms); critic updates per generator update
    are the method's business (e.g. WGAN's n_critic). ``epochs`` is for methods whose papers count passes over the
    training set (GLICO): how many steps an epoch is depends on the task (its number of training images), so the
    method resolves it (:meth:`GenerativeMethod.steps_for`) and the harness logs and checkpoints by the result.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    steps: int = pydantic.Field(ge=1, description="generator updates per fitted model")
    epochs: int | None = pydantic.Field(
        None, ge=1, description="passes over the method's training set, instead of steps, for methods that count "
        "epochs (GenerativeMethod.supports_epochs); the method turns them into steps for its task (steps_for); when "
        "set, steps is not used"
    )
    batch_size: int = pydantic.Field(64, ge=1)
    log_every: int = pydantic.Field(50, ge=1, description="steps between loss records")
    checkpoint_every: int = pydantic.Field(0, ge=0, description="steps between checkpoints; 0 = never")


class TrialDiverged(RuntimeError):
    """Raised by the harness when a method reports a non-finite loss."""


Losses = Mapping[str, "Tensor | float"]


def loss_values(losses: Losses) -> dict[str, float]:
    """``losses`` as Python floats, with one host synchronisation for all tensors (not one per loss)."""
    tensors = {k: v for k, v in losses.items() if isinstance(v, Tensor)}
    values = {k: float(v) for k, v in losses.items() if not isinstance(v, Tensor)}
    if tensors:
        stacked = torch.stack([t.detach().float().reshape(()) for t in tensors.values()]).tolist()
        values.update(zip(tensors, stacked))
    return {k: values[k] for k in losses}


class FitHooks(Protocol):
    """What a method calls during ``fit``: one hook per generator step. The harness decides what happens there —
    when to log, checkpoint (through ``state_dict``), evaluate, and stop a diverging trial — so a method's loop holds
    no bookkeeping."""

    def step_end(self, step: int, losses: Losses, info: dict[str, Any] | None = None) -> None:
        """Generator step ``step`` (0-based) is done and the method's state is consistent (``state_dict`` may be
        called). ``losses`` are that step's losses; pass tensors as they are (detached, on the method's device): the
        harness reads them only on the steps it logs, so most steps cost no host synchronisation. ``info`` carries
        facts such as the batch source. May raise :class:`TrialDiverged` (or the harness's own stop signal): let it
        propagate."""


@dataclass
class NullHooks:
    """Hooks that only remember what they were told (tests and quick scripts): the losses of every ``log_every``-th
    step, as floats, with their ``info``."""

    log_every: int = 1
    records: list[tuple[int, dict[str, float], dict[str, Any]]] = field(default_factory=list)

    def step_end(self, step: int, losses: Losses, info: dict[str, Any] | None = None) -> None:
        if step % self.log_every == 0:
            self.records.append((step, loss_values(losses), dict(info or {})))


class GenerativeMethod(abc.ABC):
    """One few-shot image generation method.

    Subclasses set ``name``, ``Config`` (a pydantic model whose defaults are the paper's settings), ``conditional`` and
    ``description``. Unconditional methods (``conditional = False``) are fitted once per novel class by the harness on
    that class's shots only, so every method can answer ``sample(labels)``.
    """

    name: ClassVar[str]
    Config: ClassVar[type[pydantic.BaseModel]]
    conditional: ClassVar[bool]
    description: ClassVar[str] = ""
    # whether ``budget.epochs`` means something to this method (it overrides ``steps_per_epoch``); suite validation
    # refuses an epoch budget for the others
    supports_epochs: ClassVar[bool] = False
    # every later change of a ``Config`` default: version -> the fields whose default changed. Trial ids hash the
    # entry's params, not the resolved config, so without this a bare entry would keep its id (and a resumed run would
    # reuse its old results) while it means something else; see :meth:`defaults_version`
    default_changes: ClassVar[dict[int, tuple[str, ...]]] = {}

    @classmethod
    def defaults_version(cls, params: dict[str, Any]) -> int:
        """The defaults version a trial with ``params`` runs under: the newest change of a default it does not set
        itself (1 when it sets all of them, or none changed), hashed into its trial id when above 1."""
        return max((version for version, changed in cls.default_changes.items()
                    if any(name not in params for name in changed)), default=1)

    def __init__(
        self,
        config: pydantic.BaseModel,
        image_shape: tuple[int, int, int],
        num_classes: int,
        device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} expects a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.device = torch.device(device)

    @classmethod
    def check_environment(cls, config: pydantic.BaseModel) -> None:
        """Raise (with a message saying what to put where) when something ``config`` needs is missing on this
        machine, e.g. a pretrained weights file. The harness calls it before any trial runs; nothing may download."""

    def steps_per_epoch(self, task: FewShotTask, batch_size: int) -> int:
        """Generator steps in one pass over the training set this method builds from ``task``; only methods with
        ``supports_epochs`` define it."""
        raise ValueError(f"{self.name}: budget.epochs is not supported (this method counts generator steps); give "
                         "budget.steps")

    def steps_for(self, task: FewShotTask, budget: Budget) -> int:
        """The generator steps ``fit`` runs for ``budget`` on ``task``: ``budget.epochs × steps_per_epoch`` when the
        budget counts epochs, else ``budget.steps``. The harness logs and checkpoints by this count."""
        if budget.epochs is None:
            return budget.steps
        return budget.epochs * self.steps_per_epoch(task, budget.batch_size)

    @abc.abstractmethod
    def fit(self, task: FewShotTask, budget: Budget, hooks: FitHooks) -> None:
        """Train on ``task`` until ``steps_for(task, budget)`` generator steps (``budget.steps`` unless the budget
        counts epochs) are done, calling ``hooks.step_end`` after each.

        A method restored with ``load_state_dict`` continues from the step it had reached (resume), so the step
        counter is part of its state.
        """

    @abc.abstractmethod
    def sample(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Return ``len(labels)`` images (n×C×H×W, float in [0, 1]) of the requested classes."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume ``fit`` or to ``sample`` later."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
