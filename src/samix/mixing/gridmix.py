"""GridMix (Baek et al., 2021): cell-wise mixing on a coarse n x n grid.

Construction (our choice where the paper leaves freedom):

* the grid size ``n`` is a uniform integer in ``n_holes = (low, high)``
  (inclusive), one per batch in ``mode="batch"`` and one per sample in
  ``mode="elem"``;
* each of the ``n x n`` cells independently keeps the **original** sample with
  probability ``lam`` and takes the partner with probability ``1 - lam``
  (Bernoulli per cell), ``lam ~ Beta(alpha, alpha)``;
* the cell grid is upsampled to ``H x W`` by nearest neighbour: pixel row ``y``
  lies in cell row ``floor(y * n / H)`` (same for columns), i.e.
  ``F.interpolate(..., mode="nearest")``; cells need not divide the image
  evenly, and when ``n > H`` some cells cover no pixel;
* the realised ``lam`` is the mask mean (the share of original pixels), which
  equals ``lam`` only in expectation. The paper's auxiliary local-context loss
  is a training-side matter and is not part of this policy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from samix._checks import argument_error, is_int

from .base import MixResult, Mixer, mask_mix
from .registry import register_mixer


def _check_int_range(name: str, value, minimum: int = 1) -> tuple[int, int]:
    """An int ``n`` (meaning ``(n, n)``) or a pair ``(low, high)`` with ``minimum <= low <= high``."""
    if is_int(value):
        value = (int(value), int(value))
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(is_int(v) for v in value):
        raise argument_error(name, "an int or a pair of ints (low, high)", value, error=TypeError)
    low, high = int(value[0]), int(value[1])
    if low < minimum or high < low:
        raise argument_error(name, f"a pair with {minimum} <= low <= high", (low, high))
    return low, high


def grid_cell_mask(cells: Tensor, n: Tensor, h: int, w: int) -> Tensor:
    """Nearest-neighbour upsampling of per-sample ``n[i] x n[i]`` cell grids to ``[N, 1, h, w]``.

    ``cells`` is ``[N, m, m]`` (``m >= max(n)``; only the top-left ``n[i] x n[i]``
    block of sample ``i`` is used), ``n`` a long ``[N]``. Pixel ``(y, x)`` of
    sample ``i`` reads cell ``(floor(y n_i / h), floor(x n_i / w))`` -- the index
    rule of ``F.interpolate(mode="nearest")`` -- with one gather for the batch.
    """
    dev = cells.device
    n = n.to(dev).view(-1, 1)
    rows = torch.div(torch.arange(h, device=dev).view(1, h) * n, h, rounding_mode="floor")  # [N, h]
    cols = torch.div(torch.arange(w, device=dev).view(1, w) * n, w, rounding_mode="floor")  # [N, w]
    batch = torch.arange(cells.shape[0], device=dev).view(-1, 1, 1)
    return cells[batch, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


@register_mixer("gridmix")
class GridMix(Mixer):
    """GridMix: an ``n x n`` grid whose cells come from the partner with probability ``1 - lam``.

    Args:
        n_holes: grid size, an int or an inclusive range ``(low, high)`` of ints >= 1 (default ``(2, 6)``).
        **kwargs: the common :class:`~samix.mixing.base.Mixer` arguments.

    See the module docstring for the construction; the returned mask is binary
    and the returned ``lam`` is its mean.
    """

    def __init__(self, *args, n_holes=(2, 6), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.n_holes = _check_int_range("n_holes", n_holes)

    def sample_masks(self, lam: np.ndarray, h: int, w: int, device) -> Tensor:
        """Bool ``[N, 1, h, w]`` (True = original), ``N = lam.size``."""
        low, high = self.n_holes
        count = lam.size
        n = low + np.floor(self.uniform(count).numpy() * (high - low + 1)).astype(np.int64)
        n = np.minimum(n, high)
        m = int(n.max())
        keep = self.uniform(count, m, m).numpy() < np.asarray(lam, dtype=np.float64).reshape(-1, 1, 1)
        return grid_cell_mask(torch.as_tensor(keep, device=device), torch.as_tensor(n), h, w)

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray) -> MixResult:
        b = images.shape[0]
        h, w = images.shape[-2:]
        mask = self.sample_masks(lam, h, w, images.device)
        mixed = mask_mix(images, index, mask)
        mask = mask.to(images.dtype).expand(b, 1, h, w)
        lam_real = mask.float().mean((1, 2, 3))
        return MixResult(mixed, lam_real, index, mask)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", n_holes={self.n_holes})"


__all__ = ["GridMix", "grid_cell_mask"]
