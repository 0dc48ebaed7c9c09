"""Mixup (Zhang et al., 2018): a global convex combination of two images."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import MixResult, Mixer, broadcast_weight, lam_tensor
from .registry import register_mixer


@register_mixer("mixup")
class MixUp(Mixer):
    """``mixed = lam * x + (1 - lam) * x[index]``, ``lam ~ Beta(alpha, alpha)``; no mask."""

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray) -> MixResult:
        b = images.shape[0]
        partner = images[index]
        if lam.size == 1:
            # one scalar weight: a single fused lerp, the memory-bound floor
            mixed = torch.lerp(partner, images, float(lam[0]))
        else:
            lam_t = lam_tensor(lam, b, images.device)
            mixed = torch.lerp(partner, images, broadcast_weight(lam_t, images))
        return MixResult(mixed, lam_tensor(lam, b, images.device), index, None)
