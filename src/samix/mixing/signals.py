"""What a model-guided policy reads from the online network (``Mixer.requires``), computed in one place.

* ``saliency`` (PuzzleMix, Kim et al. 2020): the per-pixel norm of the input gradient of the
  classification loss, ``S = sqrt(mean_c (dL/dx)^2)``, ``[B, H, W]``, with the model in **eval mode**
  (BatchNorm statistics untouched) as the official code does for ``clean_lam = 0``. It costs one extra
  forward + backward of the model. The gradient is taken with ``torch.autograd.grad`` with respect to the
  input only, so nothing accumulates in the parameters' ``.grad``: the saliency pass never leaks into the
  step's update (tested). The official code instead calls ``backward`` and zeroes the optimizer after.

* ``activation`` (AttentiveMix, Walawalkar et al. 2020): the channel mean of the model's last feature map
  ``[B, h, w]`` (a samix Backbone's ``features(x, num_stages)``; a ViT's patch map), with the model in eval
  mode and no gradient: one extra forward, nothing of the step's graph or BatchNorm statistics touched.

The model is any module mapping images to logits (duck typing: this layer imports no model code). Labels
are integer class indices ``[B]`` or probability rows ``[B, K]``.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _loss(logits: Tensor, labels: Tensor) -> Tensor:
    logits = logits.float()
    if labels.dim() == 2:
        return -(labels.float() * F.log_softmax(logits, dim=1)).sum(1).mean()
    return F.cross_entropy(logits, labels.long())


def input_saliency(model, images: Tensor, labels: Tensor) -> Tensor:
    """``[B, H, W]`` float32: ``sqrt(mean over channels of (dL/dx)^2)`` of the mean cross-entropy."""
    if model is None or not callable(model):
        raise TypeError("the saliency signal needs the model (a module mapping images to logits), got "
                        f"{type(model).__name__}")
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.enable_grad():
            x = images.detach().requires_grad_(True)
            loss = _loss(model(x), labels.to(images.device))
            (grad,) = torch.autograd.grad(loss, x)
    finally:
        if was_training:
            model.train()
    return grad.float().pow(2).mean(1).sqrt()


def last_activation(model, images: Tensor, labels: Tensor = None) -> Tensor:
    """``[B, h, w]`` float32: the channel mean of the last feature map (eval mode, no gradient)."""
    features = getattr(model, "features", None)
    if not callable(features):
        raise TypeError("the activation signal needs a samix Backbone (with features(x, stage)), got "
                        f"{type(model).__name__}")
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad():
            h = features(images, int(getattr(model, "num_stages", 4)))
    finally:
        if was_training:
            model.train()
    return h.float().mean(1)


#: name -> ``fn(model, images, labels) -> Tensor``
SIGNALS: Dict[str, Callable[..., Tensor]] = {
    "saliency": input_saliency,
    "activation": last_activation,
}


def compute_signals(names: Sequence[str], model, images: Tensor, labels: Tensor) -> Dict[str, Tensor]:
    """``{name: signal}`` for each name of ``names`` (``SIGNALS``), a sentence for an unknown one."""
    out = {}
    for n in names:
        if n not in SIGNALS:
            raise ValueError(f"unknown model signal {n!r}; known: {', '.join(sorted(SIGNALS))}")
        out[n] = SIGNALS[n](model, images, labels)
    return out


__all__ = ["SIGNALS", "compute_signals", "input_saliency", "last_activation"]
