"""TransMix (Chen et al., CVPR 2022): CutMix for vision transformers with lambda re-weighted by the class
token's attention to the patches of each source.

The images are mixed as CutMix mixes them (``mask = 1`` keeps the original). The label weight is read from
the forward pass of the mixed images itself (``relabels = True``; no extra pass)::

    A      = mean over heads of softmax(q_cls k^T / sqrt(d))[patch tokens]   (the last block, [B, N])
    m      = area share of each patch that comes from the original          (the mask, pooled to the grid)
    lam    = sum_p A_p m_p / sum_p A_p                                      (the attention share of x_i)

so a pasted box that covers the object the class token looks at carries most of the label, however small
it is. The attention is read through a documented hook rather than by copying timm's code:
:meth:`TransMix.watch` sets ``fused_attn = False`` on the last block's ``Attention`` for the duration of the
forward pass (timm then computes the attention matrix explicitly) and a forward pre-hook on its
``attn_drop`` keeps the class token's row (before dropout). Works for timm ``VisionTransformer`` models
(ViT, DeiT) behind samix's adapter (``model.net.blocks``); a model without them (a CNN, Swin: no class
token) gets a sentence.

Choices: the patch shares ``m`` are exact area shares (a patch half covered by the box counts half; the
official code takes the nearest-neighbour downsampled mask), and the attention is renormalised over the
patch tokens (the class token's attention to itself and to register/distillation tokens is left out), as
the official ``lam = lam_1 / (lam_1 + lam_2)``. alpha 1 and switch probability as CutMix (DeiT recipe:
TransMix replaces CutMix in the mixup/CutMix switch; here one policy).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import MixResult
from .cutmix import CutMix
from .registry import register_mixer


def attention_share(mask: Tensor, attn: Tensor, grid) -> Tensor:
    """``[B]``: ``sum_p A_p m_p / sum_p A_p`` with ``m`` the share of patch ``p`` the mask keeps
    (``mask [B, 1, H, W]``, ``attn [B, gh * gw]`` non-negative class-token attention over the patches)."""
    gh, gw = int(grid[0]), int(grid[1])
    m = F.adaptive_avg_pool2d(mask.float(), (gh, gw)).flatten(1)
    a = attn.float()
    return (a * m).sum(1) / a.sum(1).clamp_min(1e-12)


def _last_attention(model):
    net = getattr(model, "net", model)
    blocks = getattr(net, "blocks", None)
    prefix = int(getattr(model, "num_prefix_tokens", getattr(net, "num_prefix_tokens", 0)) or 0)
    attn = getattr(blocks[-1], "attn", None) if blocks is not None and len(blocks) else None
    if attn is None or not hasattr(attn, "attn_drop") or not hasattr(attn, "fused_attn") or prefix < 1:
        raise TypeError("transmix reads the class token's attention of a vision transformer's last block (a timm "
                        f"VisionTransformer: ViT, DeiT); {type(model).__name__} has none. Use cutmix on a CNN")
    return attn, prefix


class AttentionWatch:
    """Keeps the class token's attention row of the last block during one forward pass (module docstring)."""

    def __init__(self, model) -> None:
        self.attn_module, self.prefix = _last_attention(model)
        self.row: Optional[Tensor] = None
        self._handle = None
        self._fused = None

    def _hook(self, module, inputs) -> None:
        a = inputs[0]  # [B, heads, N, N], softmaxed
        self.row = a[:, :, 0, self.prefix:].detach().float().mean(1)

    def __enter__(self) -> "AttentionWatch":
        self._fused = self.attn_module.fused_attn
        self.attn_module.fused_attn = False
        self._handle = self.attn_module.attn_drop.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self.attn_module.fused_attn = self._fused
        return None

    def relabel(self, result: MixResult) -> MixResult:
        if self.row is None:
            raise RuntimeError("transmix: no attention was recorded; call the model inside `with mixer.watch(model)`")
        if result.mask is None:  # nothing mixed: the identity keeps lam = 1
            return result
        n = self.row.shape[1]
        h, w = result.mask.shape[-2:]
        gh = int(round((n * h / w) ** 0.5))
        gw = n // max(gh, 1)
        if gh * gw != n:
            raise ValueError(f"transmix: {n} patch tokens do not form the image's {h} x {w} grid")
        lam = attention_share(result.mask.to(self.row.device), self.row, (gh, gw))
        return MixResult(result.images, lam.to(result.lam.dtype), result.index, result.mask)


@register_mixer("transmix")
class TransMix(CutMix):
    """TransMix (module docstring): CutMix images, attention-weighted lambda after the forward pass."""

    name = "transmix"
    needs_model = True
    relabels = True

    def watch(self, model, labels=None) -> AttentionWatch:
        return AttentionWatch(model)


__all__ = ["AttentionWatch", "TransMix", "attention_share"]
