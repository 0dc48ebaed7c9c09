"""Metric curves (training loss, accuracy per epoch) as a line plot."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from samix._plot import save_figure

from ._common import PathLike, _check_path, _new_figure

__all__ = ["plot_curves"]


def plot_curves(path: PathLike, series: Mapping[str, Sequence[float]], xlabel: str = "epoch",
                ylabel: str = "", title: str = "", x: Optional[Sequence[float]] = None,
                dpi: float = 100) -> Path:
    """Line plot of several named series (e.g. ``{"train_loss": [...], "val_loss": [...]}``).

    The x values are ``x`` when given (shared by all series, as long as the longest),
    else ``1, 2, ...`` (epochs); series may differ in length and hold NaN for epochs without a value (a
    metric evaluated every few epochs): those are skipped and the finite points joined, with markers when
    there are few.
    Returns the path of the PNG.
    """
    path = _check_path(path)
    if not isinstance(series, Mapping) or not series:
        raise ValueError(f"series must be a non-empty dict name -> list of numbers, got {series!r}")
    data = {}
    for name, values in series.items():
        try:
            arr = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise TypeError(f"series[{name!r}] must be a sequence of numbers, got {values!r}") from None
        if arr.size == 0:
            raise ValueError(f"series[{name!r}] is empty")
        data[str(name)] = arr
    longest = max(a.size for a in data.values())
    if x is None:
        xs = np.arange(1, longest + 1, dtype=np.float64)
    else:
        xs = np.asarray(x, dtype=np.float64).reshape(-1)
        if xs.size < longest:
            raise ValueError(f"x must have at least {longest} values (the longest series), got {xs.size}")
    fig = _new_figure(6.0, 4.0, dpi)
    ax = fig.subplots()
    for name, arr in data.items():
        keep = np.isfinite(arr)
        ax.plot(xs[:arr.size][keep], arr[keep], label=name, marker="o" if keep.sum() <= 30 else None, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_figure(fig, path, dpi=dpi, format="png", tight_layout=True)
