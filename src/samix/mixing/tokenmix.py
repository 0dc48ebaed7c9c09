"""TokenMix (Liu et al., ECCV 2022): a token-level mask of random blocks, with label weights from the
activation maps of the two images.

On a grid of ``patch``-pixel tokens (16 for 224-px ViTs; 4 on the 28-px CPU recipe), a share ``1 - lam``
of the tokens (``lam ~ Beta(alpha, alpha)``) is taken from the partner, placed as BEiT-style random
rectangles (each of 16 or more tokens where the grid allows, aspect ratio in [0.3, 1/0.3], drawn until the
count is reached, the last one cut to fit) rather than one box. The label weight is content-based
(``requires = ("cam",)``: the semantic percent maps ``S, S_j`` of :func:`samix.mixing.signals.
semantic_percent_map`, one extra forward, eval mode, no gradient)::

    lam = sum(M S) / (sum(M S) + sum((1 - M) S_j))      (M = 1 on the original's tokens)

Differences from the paper: the activation maps come from the online model (the paper uses a pre-trained
teacher, "TokenMix with a teacher" being its best variant; ``mixer.mix(x, cam=teacher_maps)`` in a custom
loop does that), computed on the patch-token map with the classifier's weights (a ViT's head reads the
class token, so this is the map of the patch features, not an exact decomposition of the logit); a pair
whose two maps are both empty where they are kept falls back to the token share.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from samix._checks import check_int

from .base import MixResult, Mixer, mask_mix
from .registry import register_mixer


def block_token_mask(gh: int, gw: int, n_partner: int, rng: np.random.Generator, min_block: int = 16) -> np.ndarray:
    """``[gh, gw]`` bool, True on exactly ``n_partner`` tokens laid out as random rectangles (BEiT's
    block-wise masking: area >= ``min_block`` tokens where possible, aspect ratio in [0.3, 1/0.3])."""
    mask = np.zeros((gh, gw), dtype=bool)
    n_partner = int(min(max(n_partner, 0), gh * gw))
    for _ in range(100 * max(1, n_partner)):
        left = n_partner - int(mask.sum())
        if left <= 0:
            break
        area = rng.uniform(min(min_block, left), max(min(min_block, left), left))
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        h = int(min(gh, max(1, round(math.sqrt(area * aspect)))))
        w = int(min(gw, max(1, round(math.sqrt(area / aspect)))))
        top, lft = int(rng.integers(0, gh - h + 1)), int(rng.integers(0, gw - w + 1))
        free = np.argwhere(~mask[top:top + h, lft:lft + w])
        for r, c in free[:left]:
            mask[top + r, lft + c] = True
    if int(mask.sum()) < n_partner:  # the rectangles met each other: fill in raster order
        free = np.argwhere(~mask)[: n_partner - int(mask.sum())]
        mask[free[:, 0], free[:, 1]] = True
    return mask


@register_mixer("tokenmix")
class TokenMix(Mixer):
    """TokenMix (module docstring); takes ``cam=[B, H, W]`` (semantic percent maps) in :meth:`mix`."""

    name = "tokenmix"
    needs_model = True
    requires = ("cam",)

    def __init__(self, *args, patch: int = 16, min_block: int = 16, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.patch = check_int("patch", patch, low=1, type_error=ValueError)
        self.min_block = check_int("min_block", min_block, low=1, type_error=ValueError)

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray, cam: Tensor = None) -> MixResult:
        b, _, h, w = images.shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"tokenmix: patch {self.patch} must divide the image ({h} x {w}); set mixer.patch to "
                             "the ViT's patch size")
        if not (torch.is_tensor(cam) and tuple(cam.shape) == (b, h, w)):
            raise ValueError(f"cam must be a [B, H, W] = [{b}, {h}, {w}] tensor of semantic percent maps "
                             f"(samix.mixing.signals.semantic_percent_map), got {tuple(getattr(cam, 'shape', ()))}")
        gh, gw = h // self.patch, w // self.patch
        lam = np.asarray(lam, dtype=np.float64)  # [1] (batch mode: one mask for the batch) or [B]
        rng = self.numpy_rng()
        grids = [~block_token_mask(gh, gw, int(round((1 - float(v)) * gh * gw)), rng, self.min_block) for v in lam]
        grid = torch.as_tensor(np.stack(grids), device=images.device).unsqueeze(1).float()   # 1 = the original
        mask = F.interpolate(grid, size=(h, w), mode="nearest").expand(b, 1, h, w) > 0.5
        mixed = mask_mix(images, index, mask)
        s = cam.detach().float().to(images.device)
        m = mask[:, 0].float()
        w_a = (m * s).flatten(1).sum(1)
        w_b = ((1 - m) * s.index_select(0, index.to(s.device))).flatten(1).sum(1)
        share = m.flatten(1).mean(1)
        total = w_a + w_b
        lam_t = torch.where(total > 1e-6, w_a / total.clamp_min(1e-6), share)
        return MixResult(mixed, lam_t.float(), index, mask.to(images.dtype))

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", patch={self.patch}, min_block={self.min_block})"


__all__ = ["TokenMix", "block_token_mask"]
