"""AttentiveMix (Attentive CutMix, Walawalkar et al., ICASSP 2020): paste the partner's most attentive
patches, where they are, into the original.

With ``a_j [h, w]`` the partner's activation map (``requires = ("activation",)``: the channel mean of the
online model's last feature map, :func:`samix.mixing.signals.last_activation`, one extra forward in eval
mode without gradient) and ``k`` patches::

    cells    = the h x w grid of the feature map, each cell an (H/h) x (W/w) patch of the image
    top_k    = the k cells of largest a_j
    mask     = 0 on the top_k cells, 1 elsewhere           (upsampled to the image by nearest neighbour)
    mixed    = mask * x + (1 - mask) * x_j,   lam = mean(mask)   (= 1 - k / (h w) when cells are whole)

``top_k``: the paper pastes N = 6 of the 7 x 7 cells of a 224-px ResNet-50 map (12 %); the default
``top_k = None`` keeps that share on any grid, ``k = round(6 / 49 * h w)`` (at least 1: 2 of the 4 x 4
cells of the Fashion-MNIST recipe's 28-px map). ``top_k = "lam"`` draws ``lam ~ Beta(alpha, alpha)``
and pastes ``k = round((1 - lam) h w)`` cells (OpenMixup's variant); an integer fixes ``k``.

Differences from the paper: the map comes from the **online** model (the paper uses a separate ImageNet
pre-trained ResNet-50; a frozen copy is one ``mixer.mix(x, activation=...)`` away in a custom loop), and
ties between cells go to the first in raster order.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from samix._checks import check_int

from .base import MixResult, Mixer, mask_mix
from .registry import register_mixer

PAPER_SHARE = 6 / 49


@register_mixer("attentivemix")
class AttentiveMix(Mixer):
    """AttentiveMix (module docstring); takes ``activation=[B, h, w]`` in :meth:`mix`."""

    name = "attentivemix"
    needs_model = True
    requires = ("activation",)

    def __init__(self, *args, top_k: Union[int, str, None] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if top_k not in (None, "lam"):
            top_k = check_int("top_k", top_k, low=1, type_error=ValueError)
        self.top_k = top_k

    def cells_to_paste(self, lam: np.ndarray, cells: int, b: int) -> np.ndarray:
        """Number of partner cells per sample ``[B]`` (within ``[1, cells - 1]``; 0 for unmixed samples)."""
        lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), (b,))
        if self.top_k == "lam":
            k = np.rint((1.0 - lam) * cells)
        elif self.top_k is None:
            k = np.full(b, round(PAPER_SHARE * cells))
        else:
            k = np.full(b, self.top_k)
        k = np.clip(k, 1, max(1, cells - 1))
        return np.where(lam >= 1.0, 0, k).astype(np.int64)

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray, activation: Tensor = None) -> MixResult:
        b, _, hh, ww = images.shape
        if not (torch.is_tensor(activation) and activation.dim() == 3 and activation.shape[0] == b):
            raise ValueError(f"activation must be a [B, h, w] tensor with B = {b} (samix.mixing.signals."
                             f"last_activation), got {tuple(getattr(activation, 'shape', ()))}")
        h, w = activation.shape[-2:]
        cells = h * w
        k = torch.as_tensor(self.cells_to_paste(lam, cells, b), device=images.device)
        partner = activation.detach().to(images.device)[index].flatten(1).float()
        # rank of each cell in its map (0 = most active; stable: ties to the first in raster order)
        order = torch.sort(partner, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(cells, device=images.device).expand(b, -1))
        paste = rank < k.view(b, 1)
        grid = (~paste).view(b, 1, h, w).float()
        mask = F.interpolate(grid, size=(hh, ww), mode="nearest") > 0.5
        mixed = mask_mix(images, index, mask)
        lam_real = mask.flatten(1).float().mean(1)
        return MixResult(mixed, lam_real, index, mask.to(images.dtype))

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", top_k={self.top_k!r})"


__all__ = ["AttentiveMix"]
