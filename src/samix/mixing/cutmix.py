"""CutMix (Yun et al., 2019): paste a box of the partner into the original.

The box covers ``1 - lam`` of the image before clipping at the border; ``lam``
is then corrected to the realised share of the original (1 - box area / HW).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from .base import MixResult, Mixer, lam_tensor, mask_mix
from .boxes import box_area_fraction, boxes_to_mask, random_boxes
from .registry import register_mixer


@register_mixer("cutmix")
class CutMix(Mixer):
    def sample_boxes(self, images: Tensor, lam: np.ndarray) -> np.ndarray:
        h, w = images.shape[-2:]
        u = self.uniform(lam.size, 2).numpy()
        boxes = random_boxes(1.0 - lam, h, w, u)
        boxes[lam >= 1.0] = 0  # unmixed samples: empty box
        return boxes

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray) -> MixResult:
        b = images.shape[0]
        h, w = images.shape[-2:]
        boxes = self.sample_boxes(images, lam)
        lam_real = 1.0 - box_area_fraction(boxes, h, w)
        if boxes.shape[0] == 1:
            # One box for the whole batch: copy only the box (cheapest possible).
            y1, y2, x1, x2 = (int(v) for v in boxes[0])
            mixed = images.clone()
            # index_select copies whole samples; images[index, ...] would gather element-wise
            mixed[:, :, y1:y2, x1:x2] = images[:, :, y1:y2, x1:x2].index_select(0, index.to(images.device))
            # convert the [1, 1, H, W] mask, then broadcast: no dense [B, 1, H, W] write
            mask = boxes_to_mask(boxes, h, w, images.device).to(images.dtype).expand(b, 1, h, w)
        else:
            mask = boxes_to_mask(boxes, h, w, images.device)
            mixed = mask_mix(images, index, mask)
            mask = mask.to(images.dtype)
        return MixResult(mixed, lam_tensor(lam_real, b, images.device), index, mask)
