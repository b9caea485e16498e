"""One small typed registry: name -> lazily imported object, plus Python entry points.

Built-in methods are listed as ``"module:Class"`` strings so that ``harness methods`` or suite validation does not
import every method's dependencies; out-of-tree packages add methods through the ``harness.methods`` entry-point group
(``[project.entry-points."harness.methods"] mymethod = "mypkg.mymethod:MyMethod"``) without forking.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message suggests the closest registered names."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _import_target(target: str) -> object:
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise ValueError(f"registry target {target!r} must look like 'package.module:Name'")
    return getattr(importlib.import_module(module_name), attribute)


class Registry(Generic[T]):
    """Maps names to objects of type ``T``, imported on first use."""

    def __init__(self, kind: str, entry_point_group: str | None = None, base: type | str | None = None,
                 built_in: dict[str, str | T] | None = None) -> None:
        """``base``: the class every entry must subclass, or its ``"module:Name"`` when importing it here would be
        circular (it is imported on the first ``get``). ``built_in``: entries registered at once."""
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.base = base
        self._targets: dict[str, str | T] = {}
        self._loaded: dict[str, T] = {}
        self._entry_points_scanned = False
        for name, target in (built_in or {}).items():
            self.register(name, target)

    def register(self, name: str, target: str | T, *, overwrite: bool = False) -> None:
        """Register ``target`` (an object or a lazy ``"module:Name"`` string) under ``name``."""
        if not overwrite and name in self._targets and self._targets[name] != target:
            raise ValueError(f"{self.kind} {name!r} is already registered as {self._targets[name]!r}")
        self._targets[name] = target
        self._loaded.pop(name, None)

    def _scan_entry_points(self) -> None:
        if self._entry_points_scanned or self.entry_point_group is None:
            return
        self._entry_points_scanned = True
        for ep in entry_points(group=self.entry_point_group):
            self._targets.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._scan_entry_points()
        return sorted(self._targets)

    def __contains__(self, name: object) -> bool:
        self._scan_entry_points()
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def target(self, name: str) -> str:
        """Where ``name`` comes from (for provenance), without importing it."""
        self._require(name)
        target = self._targets[name]
        return target if isinstance(target, str) else f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', target)}"

    def _require(self, name: str) -> None:
        if name not in self:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; registered: {', '.join(self.names())}"
            )

    def get(self, name: str) -> T:
        self._require(name)
        if name not in self._loaded:
            target = self._targets[name]
            obj = _import_target(target) if isinstance(target, str) else target
            if isinstance(self.base, str):
                self.base = _import_target(self.base)
            if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
                raise TypeError(f"{self.kind} {name!r} -> {target!r} is not a subclass of {self.base.__name__}")
            self._loaded[name] = obj  # type: ignore[assignment]
        return self._loaded[name]


def _method_registry() -> Registry:
    from harness.api import GenerativeMethod

    return Registry("method", "harness.methods", base=GenerativeMethod, built_in={
        "dcgan": "methods.dcgan:DCGAN",
        "wgan": "methods.wgan:WGAN",
        "wgan_gp": "methods.wgan_gp:WGANGP",
        "cgan": "methods.cgan:CGAN",
        "glico": "methods.glico:GLICO",
        "metacgan": "methods.metacgan:MetaCGAN",
        # baselines that train nothing: the floor a generator is read against
        "copy_shots": "methods.copy_shots:CopyShots",
        "augment_shots": "methods.augment_shots:AugmentShots",
    })


METHODS = _method_registry()


def get_method(name: str):
    """The method class registered as ``name`` (raises with a "did you mean" suggestion)."""
    return METHODS.get(name)


# Datasets: name -> its harness.data.base.DatasetReader (config class, metadata, loader); out-of-tree ones come
# through the harness.datasets entry-point group. The suite schema (harness.data.config.DatasetConfig, a union on
# `name`) is built from this registry, so a registered reader is all a new dataset needs.
DATASETS: Registry = Registry("dataset", "harness.datasets", base="harness.data.base:DatasetReader", built_in={
    "mnist": "harness.data.readers:MNISTReader",
    "fashion_mnist": "harness.data.readers:FashionMNISTReader",
    "celeba": "harness.data.readers:CelebAReader",
    "image_folder": "harness.data.readers:ImageFolderReader",
})
