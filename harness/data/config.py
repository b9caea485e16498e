"""Dataset section of a suite: a pydantic discriminated union on ``name`` of the registered datasets' configs.

Each dataset's config holds only its own fields (``extra="forbid"``), so ``{name: mnist, test_fraction: 0.3}`` is
refused at ``dataset.test_fraction``; an unknown name is refused at ``dataset.name`` with the registered names and a
"did you mean". The union is built from :data:`harness.registry.DATASETS` when this module is imported: registering
a reader (built in, or through the ``harness.datasets`` entry point) is all a new dataset needs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import pydantic
from pydantic_core import PydanticCustomError

from harness.data.base import DATA_ROOT_ENV, V1_DEFAULTS, DatasetConfigBase, default_data_root
from harness.registry import DATASETS, did_you_mean

__all__ = ["DATA_ROOT_ENV", "DatasetConfig", "DatasetConfigBase", "dataset_config", "default_data_root"]


def _config_classes() -> tuple[type[DatasetConfigBase], ...]:
    classes = []
    for name in DATASETS.names():
        config = DATASETS.get(name).Config
        if config.model_fields["name"].annotation != Literal[name]:  # the discriminator must match the registry
            raise TypeError(f"dataset {name!r}: {config.__name__}.name must be Literal[{name!r}]")
        classes.append(config)
    return tuple(classes)


def _dispatch(value: Any) -> Any:
    """Before the union: name the bad ``name`` (pydantic would only list the tags) and accept version-1 dumps.

    A complete version-1 dump (all the flat config's keys, as run directories, result.json specs and Tune's stored
    param space hold them) carries the fields other datasets have at their defaults; those are dropped, so old runs
    resume and old files load. Anything else keeps its keys, and a field of another dataset is refused by name."""
    if not isinstance(value, dict):
        return value  # a config instance, or pydantic's own type error
    name = value.get("name")
    if not isinstance(name, str) or name not in DATASETS:
        known = ", ".join(DATASETS.names())
        if "name" not in value:
            message = f"required field is missing (the dataset: one of {known})"
        elif isinstance(name, str):
            message = f"unknown dataset {name!r}{did_you_mean(name, DATASETS.names())}; registered: {known}"
        else:
            message = f"a dataset name is a string, not {name!r}; registered: {known}"
        raise PydanticCustomError("unknown_dataset", "{message}", {"message": message, "field": "name"})
    if set(value) == {"name", *V1_DEFAULTS}:
        fields = DATASETS.get(name).Config.model_fields
        value = {k: v for k, v in value.items() if k in fields or v != V1_DEFAULTS[k]}
    return value


_CONFIGS = _config_classes()

DatasetConfig = Annotated[
    Union[_CONFIGS],  # noqa: UP007 - a Union built from a tuple of classes
    pydantic.Field(discriminator="name"),
    pydantic.BeforeValidator(_dispatch),
]
"""The type of a suite's ``dataset`` field: one of the registered datasets' configs, chosen by ``name``."""

_ADAPTER: pydantic.TypeAdapter = pydantic.TypeAdapter(DatasetConfig)


def dataset_config(data: dict[str, Any] | None = None, /, **fields: Any) -> DatasetConfigBase:
    """The config of the dataset named in ``data`` or ``fields`` (``dataset_config(name="mnist", source="embedded")``);
    raises pydantic.ValidationError like a suite's ``dataset:`` section would."""
    return _ADAPTER.validate_python({**(data or {}), **fields})

