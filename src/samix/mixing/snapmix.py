"""SnapMix (Huang, Wang & Tao, AAAI 2021): a box of the partner, resized into a box of the original, with
label weights from the class activation maps of the two images.

With ``S, S_j`` the semantic percent maps of the two images for their own labels (``requires = ("cam",)``:
:func:`samix.mixing.signals.semantic_percent_map`, maps summing to 1; one extra forward, eval mode, no
gradient) and two boxes drawn as CutMix draws them from two lambdas ``lam, lam' ~ Beta(alpha, alpha)``::

    x~     = x with box B (area 1 - lam) replaced by the partner's box B' (area 1 - lam'), resized bilinearly
    w_a    = 1 - sum_{B} S          (the original's semantic share left outside B)
    w_b    = sum_{B'} S_j           (the partner's semantic share pasted)
    loss   = w_a * L(y) + w_b * L(y_j)        (w_a + w_b need not be 1)

In the library's convention the result carries ``lam = w_a / (w_a + w_b)`` and ``weight = w_a + w_b``
(:attr:`samix.mixing.MixResult.weight`), so any mixed loss ``L`` gives SnapMix's loss; the drop-in
``mixer(x, y, model=m)`` returns the targets ``w_a y + w_b y_j``. ``mask`` is the box layout (1 outside
``B``); the image inside ``B`` is the *resized* partner box, so ``pixel_aligned = False``.

Defaults: alpha 5 (the official fine-grained recipe's ``beta = 5``) [samix.txt gives none], mixing
probability 1 (the official recipe uses 1 for ResNets).

Differences from the official code: (1) the CAM pass runs in eval mode (the official one in train mode,
which also updates BatchNorm statistics); (2) a pair of one class keeps its two weights (the official code
adds each to the other, a weight ``2 (w_a + w_b)`` on the common label); (3) a degenerate pair (both maps
empty: ``w_a + w_b = 0``) falls back to the box areas, as the official ``nan`` rule does; (4) ``mode="elem"``
(one box pair per sample) is offered beside the official one box pair per batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import MixResult, Mixer
from .boxes import box_area_fraction, boxes_to_mask, random_boxes
from .registry import register_mixer


def box_sums(maps: Tensor, boxes: np.ndarray) -> Tensor:
    """``[B]``: the sum of each map ``[B, H, W]`` inside its box (``[1 or B, 4]`` rows ``y1, y2, x1, x2``)."""
    b = maps.shape[0]
    rows = np.broadcast_to(boxes, (b, 4))
    return torch.stack([maps[i, int(r[0]):int(r[1]), int(r[2]):int(r[3])].sum() for i, r in enumerate(rows)])


@register_mixer("snapmix")
class SnapMix(Mixer):
    """SnapMix (module docstring); takes ``cam=[B, H, W]`` (semantic percent maps) in :meth:`mix`."""

    name = "snapmix"
    needs_model = True
    requires = ("cam",)
    pixel_aligned = False

    def __init__(self, alpha: float = 5.0, *args, **kwargs) -> None:
        super().__init__(alpha, *args, **kwargs)

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray, cam: Tensor = None) -> MixResult:
        b, _, h, w = images.shape
        if not (torch.is_tensor(cam) and tuple(cam.shape) == (b, h, w)):
            raise ValueError(f"cam must be a [B, H, W] = [{b}, {h}, {w}] tensor of semantic percent maps "
                             f"(samix.mixing.signals.semantic_percent_map), got {tuple(getattr(cam, 'shape', ()))}")
        lam = np.asarray(lam, dtype=np.float64)
        lam2 = self.sample_lam(b) if lam.size > 1 else self.sample_lam(1)
        lam2 = np.where(lam >= 1.0, 1.0, lam2)
        box = random_boxes(1.0 - lam, h, w, self.uniform(lam.size, 2).numpy())
        box_p = random_boxes(1.0 - lam2, h, w, self.uniform(lam.size, 2).numpy())
        empty = (box[:, 1] <= box[:, 0]) | (box[:, 3] <= box[:, 2]) | (box_p[:, 1] <= box_p[:, 0]) | \
            (box_p[:, 3] <= box_p[:, 2])
        box[empty] = 0
        box_p[empty] = 0
        partner = images.index_select(0, index.to(images.device))
        mixed = images.clone()
        rows = np.broadcast_to(box, (b, 4))
        rows_p = np.broadcast_to(box_p, (b, 4))
        groups = [np.arange(b)] if box.shape[0] == 1 else [np.array([i]) for i in range(b)]
        for g in groups:
            y1, y2, x1, x2 = (int(v) for v in rows[g[0]])
            p1, p2, q1, q2 = (int(v) for v in rows_p[g[0]])
            if y2 <= y1 or x2 <= x1:
                continue
            sel = torch.as_tensor(g, device=images.device)
            patch = partner.index_select(0, sel)[:, :, p1:p2, q1:q2]
            mixed[sel, :, y1:y2, x1:x2] = F.interpolate(patch, size=(y2 - y1, x2 - x1), mode="bilinear",
                                                        align_corners=True).to(images.dtype)
        s = cam.detach().float().to(images.device)
        w_a = 1.0 - box_sums(s, box)
        w_b = box_sums(s.index_select(0, index.to(s.device)), box_p)
        area = torch.as_tensor(1.0 - box_area_fraction(rows, h, w), dtype=torch.float32, device=images.device)
        total = w_a + w_b
        ok = total > 1e-6
        lam_t = torch.where(ok, w_a / total.clamp_min(1e-6), area)
        weight = torch.where(ok, total, torch.ones_like(total))
        mask = boxes_to_mask(box, h, w, images.device).to(images.dtype).expand(b, 1, h, w)
        return MixResult(mixed, lam_t.float(), index, mask, weight=weight.float())


__all__ = ["SnapMix", "box_sums"]
