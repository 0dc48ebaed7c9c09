"""SMMix (Chen et al., ICCV 2023, "Self-Motivated Image Mixing for Vision Transformers"): max-min attention
region mixing, guided by the model under training itself.

With ``A, A_j`` the class-token attention maps of the two clean images on the ``gh x gw`` token grid
(``requires = ("attention",)``: :func:`samix.mixing.signals.class_token_attention`, one extra forward in
eval mode without gradient) and a square of ``r x r`` tokens, ``r`` uniform in ``[0.25 g, 0.75 g]``
(``min_side_ratio``, ``max_side_ratio``; ``g`` the grid side)::

    R_min(i)  = the r x r window of least summed attention in x_i          (where x_i loses least)
    R_max(j)  = the r x r window of most summed attention in x_j           (what x_j has most of)
    x~_i      = x_i with the tokens of R_min(i) replaced by those of R_max(j), token by token
    lam       = 1 - r^2 / (gh gw)                                           (label = "area", the default)

``label="attention"`` re-weights lambda by the mixed image's own class-token attention of the same forward
pass (TransMix's rule, :class:`samix.mixing.transmix.AttentionWatch`): the paper's "self-motivated" label
in its simplest form. The paper's fine-grained label assignment head and feature-consistency loss are not
built. The token grid is read from the attention map (a ViT with square patches and a square grid);
``alpha`` is unused (the window side is drawn uniformly, as the paper; ``prob`` applies). ``mask`` marks the
original's tokens (0 on ``R_min``), so the mixed image is not pixel-aligned with
``x_j`` (the pasted tokens move), but ``mixed == x`` exactly where ``mask == 1``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from samix._checks import check_choice, check_number

from .base import MixResult, Mixer
from .registry import register_mixer
from .transmix import AttentionWatch


def window_argextremes(attn: Tensor, r: int) -> tuple:
    """``(argmin, argmax)`` ``[B]`` of the summed attention over every ``r x r`` window (top-left corner
    ``k = row * (g - r + 1) + col``)."""
    sums = F.avg_pool2d(attn.unsqueeze(1).float(), r, stride=1).flatten(1)
    return sums.argmin(1), sums.argmax(1)


@register_mixer("smmix")
class SMMix(Mixer):
    """SMMix (module docstring); takes ``attention=[B, gh, gw]`` in :meth:`mix`."""

    name = "smmix"
    needs_model = True
    requires = ("attention",)
    pixel_aligned = False

    def __init__(self, *args, min_side_ratio: float = 0.25, max_side_ratio: float = 0.75, label: str = "area",
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.min_side_ratio = check_number("min_side_ratio", min_side_ratio, low=0.0, high=1.0, low_open=True)
        self.max_side_ratio = check_number("max_side_ratio", max_side_ratio, low=self.min_side_ratio, high=1.0)
        self.label = check_choice("label", label, ("area", "attention"))
        self.relabels = self.label == "attention"

    def watch(self, model, labels=None):
        return AttentionWatch(model) if self.relabels else super().watch(model, labels)

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray, attention: Tensor = None) -> MixResult:
        b, c, h, w = images.shape
        if not (torch.is_tensor(attention) and attention.dim() == 3 and attention.shape[0] == b):
            raise ValueError(f"attention must be a [B, gh, gw] tensor with B = {b} (samix.mixing.signals."
                             f"class_token_attention), got {tuple(getattr(attention, 'shape', ()))}")
        gh, gw = attention.shape[-2:]
        if gh != gw or h % gh or w % gw:
            raise ValueError(f"smmix needs a square token grid dividing the image, got {gh} x {gw} on {h} x {w}")
        if float(np.min(lam)) >= 1.0:
            return MixResult(images, torch.ones(b, device=images.device), torch.arange(b, device=images.device))
        g, p = gh, h // gh
        lo, hi = max(1, int(g * self.min_side_ratio)), max(1, int(g * self.max_side_ratio))
        r = int(self.numpy_rng().integers(lo, hi + 1))
        a = attention.detach().to(images.device)
        kmin, _ = window_argextremes(a, r)
        _, kmax = window_argextremes(a.index_select(0, index.to(a.device)), r)
        span = g - r + 1
        tok = images.reshape(b, c, g, p, g, p)
        partner = tok.index_select(0, index.to(images.device))
        mixed = tok.clone()
        grid = torch.ones(b, g, g, device=images.device)
        for i in range(b):  # one window per sample: a slice copy each
            y0, x0 = divmod(int(kmin[i]), span)
            y1, x1 = divmod(int(kmax[i]), span)
            mixed[i, :, y0:y0 + r, :, x0:x0 + r, :] = partner[i, :, y1:y1 + r, :, x1:x1 + r, :]
            grid[i, y0:y0 + r, x0:x0 + r] = 0
        mixed = mixed.reshape(b, c, h, w)
        mask = grid.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1).to(images.dtype)
        lam_t = torch.full((b,), 1.0 - r * r / (g * g), device=images.device)
        return MixResult(mixed, lam_t, index, mask)

    def __repr__(self) -> str:
        return (super().__repr__()[:-1] + f", min_side_ratio={self.min_side_ratio}, "
                f"max_side_ratio={self.max_side_ratio}, label={self.label!r})")


__all__ = ["SMMix", "window_argextremes"]
