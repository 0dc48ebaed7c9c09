"""The one way samix makes and saves a matplotlib figure (used by :mod:`samix.evaluate` and
:mod:`samix.viz`, so it sits below both).

Figures are :class:`matplotlib.figure.Figure` objects on the Agg canvas, never ``pyplot``: no
global state, no display, safe in worker threads. matplotlib is imported when a figure is made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

__all__ = ["new_figure", "save_figure"]

PathLike = Union[str, os.PathLike]


def new_figure(width: float, height: float, dpi: float):
    """A ``width x height`` inch :class:`~matplotlib.figure.Figure` at ``dpi``, on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: PathLike, *, dpi: Optional[float] = None, format: Optional[str] = None,
                tight_layout: bool = False, colors: Optional[int] = None) -> Path:
    """Save ``fig`` to ``path`` (parent folders created) and return the path.

    Args:
        dpi: resolution (default: matplotlib's ``savefig.dpi``, normally the figure's).
        format: file format (default: inferred from the suffix by matplotlib).
        tight_layout: call ``fig.tight_layout()`` first.
        colors: store a PNG with an adaptive palette of that many colours (Floyd-Steinberg
            dithered, through Pillow): about 3x smaller files, e.g. for docs.
    """
    path = Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight_layout:
        fig.tight_layout()
    if colors is None:
        fig.savefig(path, format=format, **({} if dpi is None else {"dpi": dpi}))
        return path
    from PIL import Image

    fig.canvas.draw()
    rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    rgb.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG) \
        .save(path, format="PNG", optimize=True)
    return path
