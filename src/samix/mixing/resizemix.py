"""ResizeMix (Qin et al., 2020): the whole partner image, shrunk, pasted into a box of the original.

Construction:

* box side scale ``tau ~ U(scope)`` (default ``scope = (0.1, 0.8)`` as in the
  paper); the box is ``bh x bw = clip(round(tau H), 1, H) x clip(round(tau W), 1, W)``
  pixels, placed uniformly at random **inside** the image (no clipping);
* the partner ``x[index]`` is resized to ``bh x bw`` (bilinear,
  ``align_corners=False``, no antialiasing) and written into the box;
* ``lam = 1 - bh bw / (H W)``, the share of original pixels, which is exactly
  the mean of the returned binary mask (1 outside the box).

``alpha`` is **not used** by this policy: ResizeMix decides ``lam`` from the
box scale ``tau``, not from a Beta draw (``alpha`` is accepted and validated
only so that every mixer takes the same arguments). ``prob`` works as usual.

Because the pasted content is the *resized* partner, the pixel identity
``mixed = mask * x + (1 - mask) * x[index]`` holds only where ``mask == 1``
(``pixel_aligned = False``); inside the box ``mixed`` equals the resized partner.

``mode="batch"`` draws one ``tau`` and one box for the batch (one
``F.interpolate`` and a slice copy); ``mode="elem"`` draws them per sample and
warps every partner into its own box with a single ``F.grid_sample`` over
per-sample affine grids (the same bilinear sampling positions as
``F.interpolate``), then selects with ``torch.where``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from samix._checks import argument_error, check_number

from .base import MixResult, Mixer, gather_batch, lam_tensor
from .boxes import box_area_fraction, boxes_to_mask
from .registry import register_mixer


def _check_scope(scope) -> tuple[float, float]:
    if not isinstance(scope, (tuple, list)) or len(scope) != 2:
        raise argument_error("scope", "a pair (low, high) of numbers", scope, error=TypeError)
    low = check_number("scope[0]", scope[0], low=0.0, low_open=True, high=1.0)
    high = check_number("scope[1]", scope[1], low=0.0, low_open=True, high=1.0)
    if high < low:
        raise argument_error("scope", "a pair with 0 < low <= high <= 1", (low, high))
    return low, high


def resize_into_boxes(partner: Tensor, boxes: np.ndarray) -> Tensor:
    """Every image of ``partner`` ``[N, C, H, W]`` resized (bilinear) into its box, over a full canvas.

    ``boxes`` is ``[N, 4]`` ``(y1, y2, x1, x2)``; only pixels inside box ``n`` are
    meaningful in output ``n``. The affine map sends the box onto the whole
    source image, so with ``align_corners=False`` pixel ``x`` of the box samples
    source position ``(x - x1 + 0.5) * W / bw - 0.5``, as ``F.interpolate`` does.
    Computed in at least float32 (half-precision grids would misplace samples),
    returned in the input dtype.
    """
    n, _, h, w = partner.shape
    work_dtype = torch.promote_types(partner.dtype, torch.float32)
    b = torch.as_tensor(boxes, dtype=torch.float64).clone()
    empty = (b[:, 1] <= b[:, 0]) | (b[:, 3] <= b[:, 2])
    b[empty] = torch.tensor([0.0, h, 0.0, w], dtype=torch.float64)  # identity warp, never selected
    y1, y2, x1, x2 = b.unbind(1)
    sy = (y2 - y1) / h  # half-height of the box in normalised units ([-1, 1] spans the image)
    sx = (x2 - x1) / w
    cy = (y1 + y2) / h - 1.0  # box centre in normalised units
    cx = (x1 + x2) / w - 1.0
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = 1.0 / sx
    theta[:, 0, 2] = -cx / sx
    theta[:, 1, 1] = 1.0 / sy
    theta[:, 1, 2] = -cy / sy
    theta = theta.to(device=partner.device, dtype=work_dtype)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    out = F.grid_sample(partner.to(work_dtype), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.to(partner.dtype)


@register_mixer("resizemix")
class ResizeMix(Mixer):
    """ResizeMix: paste the partner, resized by ``tau ~ U(scope)``, into a random box of the original.

    Args:
        scope: range ``(low, high)`` of the box side scale ``tau``, ``0 < low <= high <= 1``
            (default ``(0.1, 0.8)``).
        **kwargs: the common :class:`~samix.mixing.base.Mixer` arguments; ``alpha`` is unused.
    """

    #: the pasted content is resized, so it is not ``x[index]`` pixel for pixel
    pixel_aligned = False

    def __init__(self, *args, scope=(0.1, 0.8), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scope = _check_scope(scope)

    def sample_boxes(self, lam: np.ndarray, h: int, w: int) -> np.ndarray:
        """Boxes ``[N, 4]`` inside the image; an empty box where ``lam >= 1`` (unmixed)."""
        count = lam.size
        low, high = self.scope
        u = self.uniform(count, 3).numpy()
        tau = low + (high - low) * u[:, 0]
        bh = np.clip(np.floor(tau * h + 0.5), 1, h).astype(np.int64)
        bw = np.clip(np.floor(tau * w + 0.5), 1, w).astype(np.int64)
        y1 = np.minimum(np.floor(u[:, 1] * (h - bh + 1)), h - bh).astype(np.int64)
        x1 = np.minimum(np.floor(u[:, 2] * (w - bw + 1)), w - bw).astype(np.int64)
        boxes = np.stack([y1, y1 + bh, x1, x1 + bw], axis=1)
        boxes[np.asarray(lam) >= 1.0] = 0
        return boxes

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray) -> MixResult:
        b = images.shape[0]
        h, w = images.shape[-2:]
        boxes = self.sample_boxes(lam, h, w)
        lam_real = 1.0 - box_area_fraction(boxes, h, w)
        if boxes.shape[0] == 1:
            y1, y2, x1, x2 = (int(v) for v in boxes[0])
            mixed = images.clone()
            if y2 > y1 and x2 > x1:
                # resize first, then gather the small images: resizing commutes with the
                # sample permutation, and the gather then moves box-sized data only
                small = F.interpolate(images, size=(y2 - y1, x2 - x1), mode="bilinear",
                                      align_corners=False, antialias=False)
                mixed[:, :, y1:y2, x1:x2] = gather_batch(small, index)
            mask = boxes_to_mask(boxes, h, w, images.device).to(images.dtype).expand(b, 1, h, w)
        else:
            mask = boxes_to_mask(boxes, h, w, images.device)
            pasted = resize_into_boxes(gather_batch(images, index), boxes)
            mixed = torch.where(mask, images, pasted)
            mask = mask.to(images.dtype)
        return MixResult(mixed, lam_tensor(lam_real, b, images.device), index, mask)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", scope={self.scope})"


__all__ = ["ResizeMix", "resize_into_boxes"]
