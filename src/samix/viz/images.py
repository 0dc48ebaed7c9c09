"""Real photos to mix (bundled with scikit-image, no download) and plain image grids."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ._common import PathLike, _as_image_batch, _check_int, _check_path, _new_figure, _save_png, _to_hwc

__all__ = ["SAMPLE_PHOTOS", "load_sample_photos", "save_image_grid"]

#: Photos bundled with scikit-image (no download needed), in the order ``load_sample_photos`` uses.
SAMPLE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
    "immunohistochemistry", "retina", "camera", "coins", "moon",
)


def load_sample_photos(size: int = 128, n: int = 4, names: Optional[Sequence[str]] = None) -> Tensor:
    """Real photos bundled with scikit-image, as float32 ``[N, 3, size, size]`` in ``[0, 1]``.

    Each photo is center-cropped to a square (its shorter side) and resized to
    ``size`` with antialiasing (``torchvision.transforms.v2.functional``);
    grayscale photos are repeated over 3 channels.

    Args:
        size: side of the square output (>= 8).
        n: how many photos, taken in the order of :data:`SAMPLE_PHOTOS` (ignored when ``names`` is given).
        names: explicit scikit-image photo names (e.g. ``("chelsea", "rocket")``).
    """
    import skimage.data
    from torchvision.transforms.v2 import functional as F

    size = _check_int("size", size, 8)
    if names is None:
        n = _check_int("n", n, 1)
        if n > len(SAMPLE_PHOTOS):
            raise ValueError(f"n must be <= {len(SAMPLE_PHOTOS)} (the bundled photos), got {n}")
        names = SAMPLE_PHOTOS[:n]
    else:
        if isinstance(names, str) or not names:
            raise ValueError(f"names must be a non-empty sequence of photo names, got {names!r}")
        unknown = [m for m in names if m not in SAMPLE_PHOTOS]
        if unknown:
            raise ValueError(f"unknown photo name(s) {unknown}; known: {', '.join(SAMPLE_PHOTOS)}")
    out = []
    for name in names:
        arr = np.ascontiguousarray(getattr(skimage.data, name)())
        img = torch.from_numpy(arr)
        img = img.unsqueeze(0) if img.dim() == 2 else img.permute(2, 0, 1)[:3]
        img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
        img = F.to_dtype(img, torch.float32, scale=True)
        side = min(img.shape[-2:])
        img = F.center_crop(img, [side, side])
        img = F.resize(img, [size, size], antialias=True)
        out.append(img.clamp_(0.0, 1.0))
    return torch.stack(out).contiguous()


def save_image_grid(path: PathLike, images, nrow: int, titles: Optional[Sequence[str]] = None,
                    dpi: float = 100, cell_inches: float = 1.5) -> Path:
    """Save ``images`` (``[N, C, H, W]`` in [0, 1], C = 1 or 3, or a list of ``[C, H, W]``)
    as a PNG grid with ``nrow`` images per row (torchvision's ``make_grid`` convention),
    optionally titled; values outside [0, 1] are clipped. Returns the path."""
    path = _check_path(path)
    images = _as_image_batch(images)
    nrow = _check_int("nrow", nrow, 1)
    n = images.shape[0]
    if titles is not None:
        if isinstance(titles, str) or len(titles) != n:
            raise ValueError(f"titles must be a sequence of {n} strings (one per image), got {titles!r}")
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    extra = 0.3 if titles is not None else 0.0
    fig = _new_figure(cols * cell_inches, rows * (cell_inches + extra), dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.99 - (0.25 / rows if titles else 0),
                        wspace=0.05, hspace=0.25 if titles else 0.05)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(_to_hwc(images[i]), cmap="gray" if images.shape[1] == 1 else None, vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=8)
    _save_png(fig, path, dpi)
    return path
