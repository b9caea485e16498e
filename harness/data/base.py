"""What every dataset provides: its config class (the suite's ``dataset:`` section) and its reader.

A dataset is one :class:`DatasetReader` subclass registered in :data:`harness.registry.DATASETS` (built in) or in
the ``harness.datasets`` entry-point group (out of tree). The reader names its ``Config`` -- a
:class:`DatasetConfigBase` subclass whose ``name`` is ``Literal["<its name>"]`` and which holds only the fields that
dataset uses -- and knows the dataset's metadata (:meth:`DatasetReader.info`, without decoding images) and how to load
it (:meth:`DatasetReader.load`). :data:`harness.data.config.DatasetConfig`, the discriminated union on ``name`` that
suites are validated against, is built from the registered readers; nothing else dispatches on the dataset name.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic

if TYPE_CHECKING:
    from harness.data.info import DatasetInfo
    from harness.data.sources import ImageFiles, RawSplits

DATA_ROOT_ENV = "FEWSHOT_DATA"

# The single flat dataset config before the union (version 1): every field with its default. Resolved dumps written
# by that version (run directories' suite.yaml, result.json specs, Tune's stored param space) hold all of these keys,
# and suite_hash / trial_id are hashes over this record, so it stays the hashed form (see `hash_record`).
V1_DEFAULTS: dict[str, Any] = {
    "source": "auto",
    "root": None,
    "download": True,
    "image_size": None,
    "channels": None,
    "test_fraction": 0.2,
    "max_images_per_class": None,
}


def default_data_root() -> Path:
    """``$FEWSHOT_DATA`` or ``~/.cache/fewshot-harness/data``."""
    return Path(os.environ.get(DATA_ROOT_ENV, Path.home() / ".cache" / "fewshot-harness" / "data"))


class DatasetConfigBase(pydantic.BaseModel):
    """Base of every dataset's config: frozen (suites and trial specs are), unknown fields refused.

    Subclasses declare ``name: Literal["..."]`` (the union's discriminator) and their own fields only. A dataset
    with several sources has a ``source`` field (mnist); for the others ``cfg.source`` reads ``"auto"`` (what
    version 1 recorded for them), so ``spec.dataset.source`` and ``DatasetInfo.source`` exist for every dataset.
    """

    if TYPE_CHECKING:
        source: str
    else:

        def __getattr__(self, item: str) -> Any:
            # only reached when normal lookup fails, so a subclass's `source` field wins (a property here would
            # hide it: a parent's data descriptor takes precedence over the instance's field value)
            if item == "source":
                return "auto"
            return super().__getattr__(item)

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str

    def hash_record(self) -> dict[str, Any]:
        """The form suite_hash and trial_id hash: this config's JSON dump over :data:`V1_DEFAULTS`.

        Version 1 hashed the flat config with every field, so a field a dataset does not have enters as the default
        it always had there; existing suites keep their hashes and run directories resume."""
        return {**V1_DEFAULTS, **self.model_dump(mode="json")}

    def fingerprint_settings(self) -> dict[str, Any]:
        """Settings that enter ``Dataset.fingerprint`` besides the pixels (those that select or order images)."""
        return {"max_images_per_class": None, "test_fraction": None}


class ImageDatasetConfig(DatasetConfigBase):
    """Fields shared by the built-in datasets: where the files are, the image size and channels, a per-class cap."""

    root: str | None = pydantic.Field(None, description="data directory; default $FEWSHOT_DATA or ~/.cache/...")
    image_size: int | None = pydantic.Field(None, ge=8, le=256, description="square size; default the native one")
    channels: Literal[1, 3] | None = pydantic.Field(None, description="default the dataset's own")
    max_images_per_class: int | None = pydantic.Field(
        None, ge=1, description="cap on training images kept per class (memory, e.g. CelebA)"
    )

    def resolved_root(self) -> Path:
        return Path(self.root).expanduser() if self.root else default_data_root()

    def fingerprint_settings(self) -> dict[str, Any]:
        return {**super().fingerprint_settings(), "max_images_per_class": self.max_images_per_class}


class DatasetReader(ABC):
    """One dataset: its config class, its metadata, its loader. Register a subclass to add a dataset::

        DATASETS.register("my_data", "my_package.my_data:MyDataReader")   # or the harness.datasets entry point

    Readers are stateless; both methods are class methods taking the validated config.
    """

    name: ClassVar[str]
    Config: ClassVar[type[DatasetConfigBase]]
    description: ClassVar[str] = ""
    # extra names of classes (alias -> class id) that suites may use besides the class names
    class_aliases: ClassVar[dict[str, int]] = {}

    @classmethod
    @abstractmethod
    def info(cls, cfg: Any) -> DatasetInfo:
        """Metadata (class names, image shape after preprocessing, per-class counts or None) without decoding images;
        suite validation calls this, so it must be cheap and must not download."""

    @classmethod
    @abstractmethod
    def load(cls, cfg: Any) -> RawSplits:
        """Both splits as uint8 N×C×H×W (already resized and channel-converted) with int64 labels; raise
        :class:`~harness.data.errors.DataSourceError` naming the files to put where when they are missing."""

    @classmethod
    def image_files(cls, cfg: Any) -> ImageFiles | None:
        """The image files :meth:`load` decodes and how, so that ``harness validate`` (and ``harness run`` before it
        creates a run directory) can decode every one and name each bad file, instead of the load failing on the
        first mid-run. None (the default): the dataset is not stored as image files (IDX tensors, embedded arrays),
        or its files are not there yet."""
        return None
