"""TokenMix (Liu et al., ECCV 2022): a token-level mask of random blocks, with label weights from the
activation maps of the two images.

On a grid of ``patch``-pixel tokens (16 for 224-px ViTs; 4 on the 28-px CPU recipe), a share ``1 - lam``
of the tokens (``lam ~ Beta(alpha, alpha)``) is taken from the partner, placed as BEiT-style random
rectangles (each of 16 or more tokens where the grid allows, aspect ratio in [0.3, 1/0.3], drawn until the
count is reached, the last one cut to fit) rather than one box. The label weight is content-based, from
activation maps ``S`` (for the original's label) and ``S_j`` (for the partner's)::

    lam = sum(M S) / (sum(M S) + sum((1 - M) S_j))      (M = 1 on the original's tokens)

``label_maps`` says whose activations these are:

* ``"mixed"`` (default): the mixed image's own final patch tokens ``t_p`` of the same forward pass,
  ``S_p = relu(W_y . t_p + b_y)`` with the classifier ``(W, b)`` and each source's label (``relabels``:
  read through a forward hook on the ViT's final norm while ``mixer.watch(model, labels)`` is on; no extra
  pass, so the step costs what CutMix's does);
* ``"sources"``: the semantic percent maps of the two source images (``requires = ("cam",)``:
  :func:`samix.mixing.signals.semantic_percent_map`, one extra forward, eval mode, no gradient): the
  paper's definition, where the maps come from a pre-trained teacher ("TokenMix with a teacher", its best
  variant: ``mixer.mix(x, cam=teacher_maps)`` in a custom loop).

Both are on the patch-token map with the classifier's weights (a ViT's head reads the class token, so this
is the map of the patch features, not an exact decomposition of the logit). A pair whose two maps are
empty where they are kept falls back to the token share.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from samix._checks import check_choice, check_int

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
    requires = ("cam",)  # the class-level declaration (photo grids, sweeps); an instance sets its own

    def __init__(self, *args, patch: int = 16, min_block: int = 16, label_maps: str = "mixed", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.patch = check_int("patch", patch, low=1, type_error=ValueError)
        self.min_block = check_int("min_block", min_block, low=1, type_error=ValueError)
        self.label_maps = check_choice("label_maps", label_maps, ("mixed", "sources"))
        self.requires = ("cam",) if self.label_maps == "sources" else ()
        self.relabels = self.label_maps == "mixed"

    def watch(self, model, labels=None):
        if not self.relabels:
            return super().watch(model, labels)
        return TokenActivationWatch(model, labels, self.patch)

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray, cam: Tensor = None) -> MixResult:
        if cam is None and not self.requires:  # label_maps="mixed": lambda comes after the forward pass
            cam = torch.full(images.shape[:1] + images.shape[-2:], 1.0, device=images.device)
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
        return super().__repr__()[:-1] + f", patch={self.patch}, min_block={self.min_block}, " \
            f"label_maps={self.label_maps!r})"


class TokenActivationWatch:
    """Keeps a ViT's final normalised patch tokens of one forward pass, then sets each mixed sample's lambda
    from its own tokens' activations for the two labels (``label_maps="mixed"``)."""

    def __init__(self, model, labels, patch: int) -> None:
        net = getattr(model, "net", model)
        norm = getattr(net, "norm", None)
        classifier = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
        prefix = int(getattr(model, "num_prefix_tokens", getattr(net, "num_prefix_tokens", 0)) or 0)
        if norm is None or not getattr(net, "blocks", None) or not isinstance(classifier, torch.nn.Linear):
            raise TypeError("tokenmix with label_maps='mixed' reads the final patch tokens of a vision transformer "
                            f"(a timm VisionTransformer: ViT, DeiT); {type(model).__name__} has none. Use "
                            "label_maps='sources' (activation maps of the source images) or cutmix on a CNN")
        if labels is None:
            raise TypeError("tokenmix's watch needs the batch's labels: mixer.watch(model, labels)")
        self.norm, self.classifier, self.prefix, self.labels = norm, classifier, prefix, labels
        self.tokens: Optional[Tensor] = None
        self._handle = None

    def _hook(self, module, inputs, output) -> None:
        self.tokens = output[:, self.prefix:].detach()

    def __enter__(self) -> "TokenActivationWatch":
        self._handle = self.norm.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    @torch.no_grad()  # a label weight: no gradient into the classifier
    def relabel(self, result: MixResult) -> MixResult:
        if self.tokens is None:
            raise RuntimeError("tokenmix: no tokens were recorded; call the model inside `with mixer.watch(...)`")
        if result.mask is None:
            return result
        t = self.tokens.float()
        b, n, _ = t.shape
        y = self.labels.to(t.device).long()
        if y.dim() != 1:
            y = y.argmax(1)
        w, bias = self.classifier.weight.float(), self.classifier.bias
        index = result.index.to(t.device)

        def act(lbl):
            a = torch.einsum("bnc,bc->bn", t, w[lbl])
            return F.relu(a + (bias.float()[lbl].view(-1, 1) if bias is not None else 0.0))

        h, wd = result.mask.shape[-2:]
        gh = int(round((n * h / wd) ** 0.5))
        m = F.adaptive_avg_pool2d(result.mask.float().to(t.device), (gh, n // gh)).flatten(1)
        w_a = (m * act(y)).sum(1)
        w_b = ((1 - m) * act(y[index])).sum(1)
        total = w_a + w_b
        lam = torch.where(total > 1e-6, w_a / total.clamp_min(1e-6), m.mean(1))
        return MixResult(result.images, lam.to(result.lam.dtype), result.index, result.mask)


__all__ = ["TokenActivationWatch", "TokenMix", "block_token_mask"]
