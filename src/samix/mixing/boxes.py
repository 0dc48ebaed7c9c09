"""Rectangle helpers shared by the box-based policies (cutmix, resizemix, saliencymix, smoothmix).

Boxes are int64 NumPy arrays ``[N, 4]`` holding ``(y1, y2, x1, x2)`` with the
half-open convention ``rows y1..y2-1, cols x1..x2-1``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def box_size(cut_ratio: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Height and width of boxes covering ``cut_ratio`` of the image (same aspect as the image)."""
    scale = np.sqrt(np.clip(cut_ratio, 0.0, 1.0))
    return (np.floor(h * scale)).astype(np.int64), (np.floor(w * scale)).astype(np.int64)


def boxes_at(cy: np.ndarray, cx: np.ndarray, bh: np.ndarray, bw: np.ndarray, h: int, w: int) -> np.ndarray:
    """Boxes of size ``(bh, bw)`` centred at ``(cy, cx)``, clipped to the image."""
    y1 = np.clip(cy - bh // 2, 0, h)
    y2 = np.clip(cy + bh - bh // 2, 0, h)
    x1 = np.clip(cx - bw // 2, 0, w)
    x2 = np.clip(cx + bw - bw // 2, 0, w)
    return np.stack([y1, y2, x1, x2], axis=1).astype(np.int64)


def random_boxes(cut_ratio: np.ndarray, h: int, w: int, u: np.ndarray) -> np.ndarray:
    """CutMix boxes: area ``cut_ratio`` (before clipping), centre uniform over the image.

    ``u`` holds uniform draws ``[N, 2]`` for the centre (row, col).
    """
    bh, bw = box_size(cut_ratio, h, w)
    cy = np.minimum((u[:, 0] * h).astype(np.int64), h - 1)
    cx = np.minimum((u[:, 1] * w).astype(np.int64), w - 1)
    return boxes_at(cy, cx, bh, bw, h, w)


def box_area_fraction(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    return ((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])) / float(h * w)


def boxes_to_mask(boxes: np.ndarray, h: int, w: int, device) -> Tensor:
    """Bool ``[N, 1, H, W]``: True OUTSIDE the box (where the original sample is kept)."""
    b = torch.as_tensor(boxes, device=device)
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    inside = (ys >= b[:, 0, None, None]) & (ys < b[:, 1, None, None]) \
        & (xs >= b[:, 2, None, None]) & (xs < b[:, 3, None, None])
    return (~inside).unsqueeze(1)
