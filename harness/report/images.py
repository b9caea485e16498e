"""PNG helpers of the report: matplotlib figures to bytes, a samples grid cut into its class rows, a grid drawn from
``samples.pt`` for trials saved without ``samples.png``. Heavy libraries (matplotlib, PIL, torch) are imported on
use, so loading results stays light."""

from __future__ import annotations

import io
import math
from pathlib import Path

__all__ = ["figure_png", "grid_from_tensor", "scaled_height", "split_rows", "subplots"]


def subplots(n: int):
    """A figure with ``n`` axes, at most 3 a row (one per metric column), the unused cells hidden."""
    from matplotlib.figure import Figure as MplFigure

    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = MplFigure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def figure_png(fig) -> bytes:
    """``fig`` as PNG bytes without the Software tag, so an unchanged figure is byte-identical across runs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def split_rows(png: bytes, n: int) -> list[bytes]:
    """The ``n`` class rows of a torchvision grid (padding 2): one PNG per row."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        image.load()
        width, height = image.size
        row_h = (height - 2) / n
        crops = []
        for i in range(n):
            top = round(i * row_h)
            crop = image.crop((0, top, width, min(height, round((i + 1) * row_h) + 2)))
            buffer = io.BytesIO()
            crop.save(buffer, format="png")
            crops.append(buffer.getvalue())
    return crops


def grid_from_tensor(path: Path, classes: list[int], per_class: int = 8) -> bytes | None:
    """A samples.png-like grid (one row per class) from samples.pt, for trials saved without a grid."""
    import torch
    from torchvision.utils import save_image

    from harness.files import load_samples

    data = load_samples(path)
    rows = [data["images"][data["labels"] == c][:per_class] for c in classes]
    if not rows or any(len(r) == 0 for r in rows):
        return None
    n = min(len(r) for r in rows)
    buffer = io.BytesIO()
    save_image(torch.cat([r[:n] for r in rows]).float() / 255, buffer, format="png", nrow=n, padding=2,
               pad_value=1.0)
    return buffer.getvalue()


def scaled_height(png: bytes) -> int:
    """Display height of a sample row: small images scaled up by an integer factor (at most 4) for legibility."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        height = image.size[1]
    return height * max(1, min(4, 64 // max(1, height - 4)))
