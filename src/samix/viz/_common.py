"""Helpers shared by the figures of :mod:`samix.viz`: argument checks, image conversion, saving."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from samix._checks import check_int
from samix._plot import new_figure, save_figure

PathLike = Union[str, os.PathLike]

#: The figure factory of :mod:`samix._plot` (Agg canvas, no pyplot).
_new_figure = new_figure


def _check_int(name: str, value, low: int) -> int:
    return check_int(name, value, low=low)


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _to_hwc(image: Tensor) -> np.ndarray:
    """``[C, H, W]`` tensor (C = 1 or 3) -> float ``[H, W(, 3)]`` NumPy array clipped to [0, 1]."""
    img = image.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
    if img.shape[0] == 1:
        return img[0].numpy()
    return img.permute(1, 2, 0).numpy()


def _as_image_batch(images, name: str = "images") -> Tensor:
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{name} must hold at least one image, got an empty sequence")
        if not all(isinstance(t, Tensor) for t in images):
            raise TypeError(f"{name} must be a tensor or a sequence of tensors")
        images = torch.stack([t.detach().to("cpu") for t in images])
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a [N, C, H, W] tensor or a sequence of [C, H, W] tensors, "
                        f"got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(f"{name} must have shape [N, C, H, W] with N >= 1 and C in (1, 3), "
                         f"got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be floating point in [0, 1], got {images.dtype}")
    return images


def _check_lams(lams) -> np.ndarray:
    try:
        arr = np.asarray(lams, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"lams must be a sequence of numbers in [0, 1], got {lams!r}") from None
    if arr.size == 0:
        raise ValueError("lams must hold at least one value, got none")
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"lams must lie in [0, 1], got {arr.tolist()}")
    return arr


def _check_pair(photos) -> Tensor:
    photos = _as_image_batch(photos, "photos")
    if photos.shape[0] < 2:
        raise ValueError(f"photos must hold at least 2 images (A and B), got {photos.shape[0]}")
    return photos[:2]


def _save_png(fig, path: Path, dpi: float, colors: Optional[int] = None) -> None:
    save_figure(fig, path, dpi=dpi, format="png", colors=colors)
