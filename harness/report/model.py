"""The report's view model: sections of text, tables, figures and image grids that both renderers (Markdown, HTML)
draw. The builder fills it; nothing here knows where results came from or how they are drawn."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Cell", "Figure", "ImageGrid", "Row", "Section", "Table", "Text", "slug"]



@dataclass
class Cell:
    text: str
    bold: bool = False
    title: str | None = None


@dataclass
class Row:
    label: str
    cells: list[Cell]
    kind: str = "method"  # method / reference


@dataclass
class Table:
    id: str
    title: str
    columns: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    collapsed: bool = False
    align: str = "right"  # of the value columns


@dataclass
class Figure:
    id: str
    title: str
    png: bytes
    caption: str = ""


@dataclass
class ImageGrid:
    id: str
    title: str
    columns: list[str]
    rows: list[tuple[str, list[tuple[str, bytes | None]]]]  # (row label, [(file name, png)])
    notes: list[str] = field(default_factory=list)


@dataclass
class Text:
    text: str


@dataclass
class Section:
    title: str
    blocks: list[Any]
    level: int = 2


def slug(text: str) -> str:
    """An HTML id and file-name part for ``text``: the same in both renderers, so links and figure files agree."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower()

