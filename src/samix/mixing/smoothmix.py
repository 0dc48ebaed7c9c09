"""SmoothMix (Lee et al., 2020): a soft-edged square or circle blended into the other image.

The paper blends the partner in through a Gaussian-shaped mask; a Gaussian's
tails are cut by the image border by an amount that depends on where it lands,
so its mean cannot be set to ``1 - lam``. We keep the idea (a soft-edged
square/circle, no hard seams) with a **linear falloff of compact support**
that always lies inside the image, so the mask mean is ``lam`` up to pixel
discretisation:

* **Profile.** In normalised coordinates ``u = (y + 0.5) / H``,
  ``v = (x + 0.5) / W`` (the image is the unit square, so a "square" is a box
  of the image's aspect ratio) and with ``d`` the distance to the centre
  ``(c_u, c_v)`` -- ``max(|u - c_u|, |v - c_v|)`` ("square") or
  ``sqrt((u - c_u)^2 + (v - c_v)^2)`` ("circle") -- the shape's weight is the
  trapezoid::

      p(d) = clip((r - d) / rho + 1/2, 0, 1),   rho = 2 k r

  (1 inside ``r (1 - k)``, 0 beyond ``r (1 + k)``, linear in between; ``k`` is the
  softness). Its integral is ``c r^2 (1 + k^2 / 3)`` with ``c = 4`` (square) or
  ``c = pi`` (circle); ``r`` is solved so that this equals the shape's area ``a``.
* **Which image the shape carries.** The shape always holds the *minority*
  share, ``a = min(lam, 1 - lam) <= 1/2``: for ``lam >= 1/2`` the partner is the
  soft shape inside the original (mask ``= 1 - p``, the usual SmoothMix picture);
  for ``lam < 1/2`` the original is the soft shape inside the partner (mask
  ``= p``). Either way ``E[mask] = lam``.
* **Fitting.** The shape's support (half-width ``s = r (1 + k)``) must fit in
  the image; when it would not, ``k`` is lowered (per mask, by bisection) to
  the largest softness that fits -- only circles with ``a`` above ~0.38 need it.
  The centre is uniform over the positions that keep the support inside:
  ``c ~ U[s, 1 - s]`` along each axis.

Pixels sample the profile at their centres; the returned mask (weight of the
original) is float and the realised ``lam`` is its mean.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from samix._checks import check_choice, check_number

from .base import MixResult, Mixer, mask_mix
from .registry import register_mixer

SHAPES = ("square", "circle", "random")


def fitting_softness(area: np.ndarray, c: np.ndarray, softness: float) -> np.ndarray:
    """Largest softness ``<= softness`` whose trapezoid of integral ``area`` has support half-width ``<= 1/2``.

    With the support pinned at 1/2, ``r = 1 / (2 (1 + k))`` and the integral
    ``c (1 + k^2 / 3) / (4 (1 + k)^2)`` decreases in ``k``; it fits iff
    ``g(k) = (c/3 - 4A) k^2 - 8A k + (c - 4A) >= 0`` (``A = area``). ``area < c / 4``
    always fits at ``k = 0``. The answer is the first non-negative root of ``g``, in
    closed form (the cancellation-free form ``2 g(0) / (8A + sqrt(disc))`` of the
    smaller root; no real root means every ``k`` fits), clipped to ``[0, softness]``.
    """
    area = np.asarray(area, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    a, d = c / 3.0 - 4.0 * area, c - 4.0 * area
    disc = 64.0 * area ** 2 - 4.0 * a * d
    with np.errstate(divide="ignore", invalid="ignore"):
        root = np.where(disc >= 0, 2.0 * d / (8.0 * area + np.sqrt(np.maximum(disc, 0.0))), np.inf)
    root = np.where(np.isnan(root), np.inf, root)  # 0 / 0: area = 0 and c = 0, nothing to fit
    k = np.clip(root, 0.0, float(softness))
    return np.where(d < 0, 0.0, k)


def trapezoid_shapes(r: Tensor, softness: Tensor, centre: Tensor, circle: Tensor, h: int, w: int) -> Tensor:
    """Shape weights ``p`` ``[N, 1, h, w]`` of the trapezoid profile above, sampled at pixel centres.

    ``r``, ``softness`` ``[N]`` (floating point), ``centre`` ``[N, 2]`` (``c_u, c_v``,
    normalised), ``circle`` bool ``[N]`` (False: square); one device. ``r = 0``
    gives an all-zero shape. Vectorised over ``N``.
    """
    dtype, dev = r.dtype, r.device
    rho = (2.0 * softness * r).clamp_min(torch.finfo(dtype).tiny)
    u = (torch.arange(h, device=dev, dtype=dtype) + 0.5) / h
    v = (torch.arange(w, device=dev, dtype=dtype) + 0.5) / w
    du = (u.view(1, h, 1) - centre[:, 0].view(-1, 1, 1)).abs()
    dv = (v.view(1, 1, w) - centre[:, 1].view(-1, 1, 1)).abs()
    d = torch.where(circle.view(-1, 1, 1), torch.sqrt(du ** 2 + dv ** 2), torch.maximum(du, dv))
    p = ((r.view(-1, 1, 1) - d) / rho.view(-1, 1, 1) + 0.5).clamp(0.0, 1.0)
    p = torch.where((r > 0).view(-1, 1, 1), p, torch.zeros_like(p))
    return p.unsqueeze(1)


@register_mixer("smoothmix")
class SmoothMix(Mixer):
    """SmoothMix: a soft-edged (linear falloff) square or circle; the mask mean is ``lam``.

    Args:
        shape: ``"square"``, ``"circle"`` or ``"random"`` (a fair coin per mask).
        softness: ``k`` in ``(0, 1]``, the width of the soft edge relative to the
            shape's size: the falloff runs from ``r (1 - k)`` to ``r (1 + k)``
            (default 0.5; lowered per mask where the shape would not fit).
        **kwargs: the common :class:`~samix.mixing.base.Mixer` arguments.

    The mask is float (``float32``, or ``float64`` for float64 images) and
    ``lam`` is its mean; see the module docstring for the construction.
    """

    def __init__(self, *args, shape: str = "square", softness: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.shape = check_choice("shape", shape, SHAPES)
        self.softness = check_number("softness", softness, low=0.0, low_open=True, high=1.0)

    def sample_masks(self, lam: np.ndarray, h: int, w: int, device, dtype) -> Tensor:
        """Soft masks ``[N, 1, h, w]`` (weight of the original), ``N = lam.size``."""
        lam = np.asarray(lam, dtype=np.float64)
        u = self.uniform(lam.size, 3).numpy()
        circle = u[:, 2] < 0.5 if self.shape == "random" else np.full(lam.size, self.shape == "circle")
        area = np.clip(np.minimum(lam, 1.0 - lam), 0.0, 0.5)
        c = np.where(circle, math.pi, 4.0)
        k = fitting_softness(area, c, self.softness)
        r = np.sqrt(area / (c * (1.0 + k ** 2 / 3.0)))
        s = np.minimum(r * (1.0 + k), 0.5)
        centre = s[:, None] + (1.0 - 2.0 * s[:, None]) * u[:, :2]

        def t(a):
            return torch.as_tensor(a).to(device=device, dtype=dtype)

        p = trapezoid_shapes(t(r), t(k), t(centre), torch.as_tensor(circle).to(device), h, w)
        partner_is_shape = torch.as_tensor(lam >= 0.5).to(device).view(-1, 1, 1, 1)
        return torch.where(partner_is_shape, 1.0 - p, p)

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray) -> MixResult:
        b = images.shape[0]
        h, w = images.shape[-2:]
        mask_dtype = torch.promote_types(images.dtype, torch.float32)
        mask = self.sample_masks(lam, h, w, images.device, mask_dtype)
        mixed = mask_mix(images, index, mask)
        mask = mask.expand(b, 1, h, w)
        lam_real = mask.mean((1, 2, 3)).float()
        return MixResult(mixed, lam_real, index, mask)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", shape={self.shape!r}, softness={self.softness})"


__all__ = ["SHAPES", "SmoothMix", "fitting_softness", "trapezoid_shapes"]
