"""Mixup (Zhang et al., 2018): a global convex combination of two images."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import MixResult, Mixer, _tracks_grad, broadcast_weight, gather_batch, lam_tensor
from .registry import register_mixer


@register_mixer("mixup")
class MixUp(Mixer):
    """``mixed = lam * x + (1 - lam) * x[index]``, ``lam ~ Beta(alpha, alpha)``; no mask."""

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray) -> MixResult:
        b = images.shape[0]
        lam_t = lam_tensor(lam, b, images.device)
        # a sample-wise gather (index_select) blended in place into the gathered copy: one batch-sized
        # allocation and no element-wise indexing (benchmarks/mixing_throughput.py); out of place
        # when autograd tracks the images
        partner = gather_batch(images, index)
        weight = float(lam[0]) if lam.size == 1 else broadcast_weight(lam_t, images)
        if _tracks_grad(images):
            mixed = torch.lerp(partner, images, weight)
        else:
            mixed = partner.lerp_(images, weight)
        return MixResult(mixed, lam_t, index, None)
