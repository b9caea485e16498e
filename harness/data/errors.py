"""Errors and warnings of the data layer."""

from __future__ import annotations

__all__ = ["DataFallbackWarning", "DataSourceError"]


class DataSourceError(RuntimeError):
    """A dataset's files are missing or unreadable; the message says which files to put where."""


class DataFallbackWarning(UserWarning):
    """``source: auto`` could not use the preferred source and fell back to another one."""
