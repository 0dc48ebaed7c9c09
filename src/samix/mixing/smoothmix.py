"""SmoothMix (Lee et al., 2020): a soft-edged square or circle of the partner.

The paper blends the partner in through a Gaussian-shaped mask; a Gaussian's
tails are cut by the image border by an amount that depends on where it lands,
so its mean cannot be set to ``1 - lam``. We keep the idea (a soft-edged
square/circle, no hard seams) with a **linear falloff of compact support**,
whose mean is exactly ``1 - lam`` in the continuum:

In normalised coordinates ``u = (y + 0.5) / H``, ``v = (x + 0.5) / W`` (the
image is the unit square; a square is thus a box of the image's aspect ratio)
and with ``d`` the distance to the centre ``(c_u, c_v)``,
``d = max(|u - c_u|, |v - c_v|)`` ("square") or
``d = sqrt((u - c_u)^2 + (v - c_v)^2)`` ("circle"), the partner's weight is the
trapezoid::

    p(d) = clip((r - d) / rho + 1/2, 0, 1),   rho = 2 * softness * r

(1 inside ``r (1 - softness)``, 0 beyond ``r (1 + softness)``, linear in
between). Its integral is ``4 r^2 (1 + softness^2 / 3)`` (square) or
``pi r^2 (1 + softness^2 / 3)`` (circle); ``r`` is solved so that this equals
``1 - lam``. The centre is uniform over the positions that keep the support
(half-width ``s = r (1 + softness)``) inside the image along each axis, or, when
``s > 1/2``, over the positions that make it cover that axis entirely
(``c ~ U[min(s, 1 - s), max(s, 1 - s)]``). Pixels sample ``p`` at their
centres; the returned mask ``1 - p`` (weight of the original) is float and the
realised ``lam`` is its mean, which differs from the drawn ``lam`` only by
pixel discretisation and, for large boxes, the border.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .base import MixResult, Mixer, _check_number
from .registry import register_mixer

SHAPES = ("square", "circle", "random")


def smooth_masks(lam: Tensor, centre: Tensor, circle: Tensor, softness: float, h: int, w: int) -> Tensor:
    """Soft masks ``[N, 1, h, w]`` (weight of the ORIGINAL sample) of the construction above.

    ``lam`` ``[N]`` target share of the original, ``centre`` ``[N, 2]`` (``c_u, c_v``
    in normalised units), ``circle`` bool ``[N]`` (False: square); all on one
    device, floating point. Vectorised over ``N``.
    """
    dtype = lam.dtype
    dev = lam.device
    area = (1.0 - lam).clamp(0.0, 1.0)
    factor = torch.where(circle, torch.full_like(area, math.pi), torch.full_like(area, 4.0))
    r = torch.sqrt(area / (factor * (1.0 + softness ** 2 / 3.0)))
    rho = (2.0 * softness * r).clamp_min(torch.finfo(dtype).tiny)
    u = (torch.arange(h, device=dev, dtype=dtype) + 0.5) / h
    v = (torch.arange(w, device=dev, dtype=dtype) + 0.5) / w
    du = (u.view(1, h, 1) - centre[:, 0].view(-1, 1, 1)).abs()
    dv = (v.view(1, 1, w) - centre[:, 1].view(-1, 1, 1)).abs()
    d = torch.where(circle.view(-1, 1, 1), torch.sqrt(du ** 2 + dv ** 2), torch.maximum(du, dv))
    partner = ((r.view(-1, 1, 1) - d) / rho.view(-1, 1, 1) + 0.5).clamp(0.0, 1.0)
    partner = torch.where((r > 0).view(-1, 1, 1), partner, torch.zeros_like(partner))
    return (1.0 - partner).unsqueeze(1)


@register_mixer("smoothmix")
class SmoothMix(Mixer):
    """SmoothMix: a soft-edged (linear falloff) square or circle of the partner covering ``1 - lam``.

    Args:
        shape: ``"square"``, ``"circle"`` or ``"random"`` (a fair coin per mask).
        softness: width of the soft edge relative to the shape's size, in ``(0, 1]``:
            the falloff runs from ``r (1 - softness)`` to ``r (1 + softness)`` (default 0.5).
        **kwargs: the common :class:`~samix.mixing.base.Mixer` arguments.

    The mask is float (in ``float32``, or ``float64`` for float64 images) and
    ``lam`` is its mean; see the module docstring for the construction.
    """

    def __init__(self, *args, shape: str = "square", softness: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {list(SHAPES)}, got {shape!r}")
        self.shape = shape
        self.softness = _check_number("softness", softness, low=0.0, low_open=True, high=1.0)

    def sample_masks(self, lam: np.ndarray, h: int, w: int, device, dtype) -> Tensor:
        count = lam.size
        u = self.uniform(count, 3)
        if self.shape == "random":
            circle = u[:, 2] < 0.5
        else:
            circle = torch.full((count,), self.shape == "circle")
        lam64 = torch.as_tensor(np.asarray(lam, dtype=np.float64))
        factor = torch.where(circle, torch.full_like(lam64, math.pi), torch.full_like(lam64, 4.0))
        r = torch.sqrt((1.0 - lam64).clamp(0.0, 1.0) / (factor * (1.0 + self.softness ** 2 / 3.0)))
        s = r * (1.0 + self.softness)
        low, high = torch.minimum(s, 1.0 - s), torch.maximum(s, 1.0 - s)
        centre = low[:, None] + (high - low)[:, None] * u[:, :2]
        return smooth_masks(lam64.to(device, dtype), centre.to(device, dtype), circle.to(device),
                            self.softness, h, w)

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray) -> MixResult:
        b = images.shape[0]
        h, w = images.shape[-2:]
        mask_dtype = torch.promote_types(images.dtype, torch.float32)
        mask = self.sample_masks(lam, h, w, images.device, mask_dtype)
        mixed = torch.lerp(images[index], images, mask.to(images.dtype))
        mask = mask.expand(b, 1, h, w)
        lam_real = mask.mean((1, 2, 3)).float()
        return MixResult(mixed, lam_real, index, mask)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", shape={self.shape!r}, softness={self.softness})"


__all__ = ["SHAPES", "SmoothMix", "smooth_masks"]
