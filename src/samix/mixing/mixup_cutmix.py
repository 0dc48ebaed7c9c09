"""Mixup or CutMix, switched at random (the combination popularised by timm and DeiT).

With probability ``switch_prob`` a draw uses CutMix (``lam ~ Beta(cutmix_alpha,
cutmix_alpha)``, a random box of area ``1 - lam``, ``lam`` corrected to the
realised box), otherwise Mixup (``lam ~ Beta(alpha, alpha)``, a global convex
combination). ``cutmix_alpha`` defaults to ``alpha``.

* ``mode="batch"``: one coin for the whole batch; the result is exactly that of
  :class:`~samix.mixing.mixup.MixUp` (``mask=None``) or of
  :class:`~samix.mixing.cutmix.CutMix` (binary mask).
* ``mode="elem"``: one coin per sample; the mask is reported for every sample
  (float): the constant ``lam`` for a Mixup sample, the binary box mask for a
  CutMix sample, so ``mixed = mask * x + (1 - mask) * x[index]`` and
  ``lam = mask.mean((1, 2, 3))`` hold for the whole batch.

``prob`` applies before the switch: an unmixed sample has ``lam = 1`` whatever
the coin says.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from samix._checks import check_number

from .base import MixResult, Mixer, mask_mix
from .boxes import box_area_fraction, boxes_to_mask, random_boxes
from .cutmix import CutMix
from .mixup import MixUp
from .registry import register_mixer


@register_mixer("mixup_cutmix")
class MixupCutmix(Mixer):
    """Switch between Mixup and CutMix with probability ``switch_prob`` of CutMix.

    Args:
        switch_prob: probability that a draw uses CutMix, in ``[0, 1]`` (default 0.5).
        cutmix_alpha: Beta concentration of CutMix's ``lam`` (> 0); ``None``: same as ``alpha``.
        **kwargs: the common :class:`~samix.mixing.base.Mixer` arguments (``alpha`` is Mixup's).
    """

    def __init__(self, *args, switch_prob: float = 0.5, cutmix_alpha: Optional[float] = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.switch_prob = check_number("switch_prob", switch_prob, low=0.0, high=1.0)
        if cutmix_alpha is None:
            cutmix_alpha = self.alpha
        self.cutmix_alpha = check_number("cutmix_alpha", cutmix_alpha, low=0.0, low_open=True)
        # batch mode delegates to the two policies (their _mix only, never their draws of lam)
        self._cutmix = CutMix(alpha=self.cutmix_alpha)
        self._mixup = MixUp(alpha=self.alpha)

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray) -> MixResult:
        b = images.shape[0]
        h, w = images.shape[-2:]
        lam = np.asarray(lam, dtype=np.float64)
        applied = lam < 1.0
        use_cut = self.uniform(lam.size).numpy() < self.switch_prob
        # Same alpha for both: the drawn lambda serves cutmix too (so a forced lambda is honoured);
        # a distinct cutmix_alpha needs its own Beta(cutmix_alpha) draw.
        if self.cutmix_alpha == self.alpha:
            lam_cut = lam.copy()
        else:
            lam_cut = self.sample_lam(b, alpha=self.cutmix_alpha)
        if lam.size == 1:
            if use_cut[0]:
                self._cutmix.generator = self.generator  # box positions from our generator
                return self._cutmix._mix(images, index, np.where(applied, lam_cut, 1.0))
            return self._mixup._mix(images, index, lam)
        # elem mode: every sample gets a mask (constant for mixup, box for cutmix)
        cut = use_cut & applied
        lam_cut = np.where(cut, lam_cut, 1.0)
        u = self.uniform(b, 2).numpy()
        boxes = random_boxes(1.0 - lam_cut, h, w, u)
        boxes[~cut] = 0
        lam_real = np.where(cut, 1.0 - box_area_fraction(boxes, h, w), lam)
        mask_dtype = torch.promote_types(images.dtype, torch.float32)
        box_mask = boxes_to_mask(boxes, h, w, images.device)
        lam_t = torch.as_tensor(lam_real, dtype=mask_dtype).to(images.device, non_blocking=True)
        cut_t = torch.as_tensor(cut).to(images.device, non_blocking=True).view(b, 1, 1, 1)
        mask = torch.where(cut_t, box_mask.to(mask_dtype), lam_t.view(b, 1, 1, 1).expand(b, 1, h, w))
        mixed = mask_mix(images, index, mask)
        return MixResult(mixed, mask.mean((1, 2, 3)).float(), index, mask)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", switch_prob={self.switch_prob}, cutmix_alpha={self.cutmix_alpha})"


__all__ = ["MixupCutmix"]
