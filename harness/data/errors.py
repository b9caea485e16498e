"""Errors and warnings of the data layer."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataFallbackWarning", "DataSourceError", "ImageDecodeError"]


class DataSourceError(RuntimeError):
    """A dataset's files are missing or unreadable; the message says which files to put where."""


class ImageDecodeError(DataSourceError):
    """One image file cannot be decoded. ``path`` and the decoder's ``reason`` are kept apart from the message so that a
    check of a whole folder (:mod:`harness.data.verify`) can list every bad file, not only the first."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"cannot read image {path}: {reason}")

    def __reduce__(self):  # pickled by Ray and process pools: rebuilt from both fields, not from the message alone
        return type(self), (self.path, self.reason)


class DataFallbackWarning(UserWarning):
    """``source: auto`` could not use the preferred source and fell back to another one."""
