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

* ``cam`` (SnapMix, Huang et al. 2021): each image's class activation map for its own label, as a
  "semantic percent map" ``[B, H, W]`` that sums to 1: ``CAM = W_y . relu(h) + b_y`` on the last feature
  map ``h`` and the classifier ``(W, b)`` (exact for samix's pool-then-linear heads: the logit is the map's
  mean), upsampled bilinearly, minus its minimum, over its sum. Eval mode, no gradient (the official code
  runs this extra forward in train mode, which also moves the BatchNorm statistics).

* ``attention`` (SMMix, Chen et al. 2023): the class token's attention over the patch tokens in a vision
  transformer's last block, head mean, ``[B, gh, gw]`` (eval mode, no gradient; read as TransMix reads it,
  :class:`samix.mixing.transmix.AttentionWatch`): one extra forward.

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


def input_gradient(model, images: Tensor, labels: Tensor) -> Tensor:
    """``[B, C, H, W]``: the gradient of the mean cross-entropy with respect to the input only (eval mode,
    nothing accumulated in the parameters), the raw material of ``saliency``."""
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
    return grad


def saliency_and_clean_loss(model, images: Tensor, labels: Tensor):
    """``(saliency [B, H, W], clean CE)`` from one pass **in train mode** whose loss keeps its graph: the
    official ``clean_lam`` option of PuzzleMix / Co-Mixup, where the saliency pass doubles as a clean-image
    loss that takes part in the step (its gradient reaches the parameters through the step's backward)."""
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = _loss(model(x), labels.to(images.device))
        (grad,) = torch.autograd.grad(loss, x, retain_graph=True)
    return grad.detach().float().pow(2).mean(1).sqrt(), loss


def input_saliency(model, images: Tensor, labels: Tensor) -> Tensor:
    """``[B, H, W]`` float32: ``sqrt(mean over channels of (dL/dx)^2)`` of the mean cross-entropy."""
    return input_gradient(model, images, labels).float().pow(2).mean(1).sqrt()


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


def semantic_percent_map(model, images: Tensor, labels: Tensor) -> Tensor:
    """``[B, H, W]`` float32, each map non-negative and summing to 1 (module docstring, ``cam``)."""
    features = getattr(model, "features", None)
    classifier = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
    if not callable(features) or not isinstance(classifier, torch.nn.Linear):
        raise TypeError("the cam signal needs a samix Backbone with features(x, stage) and a linear classifier "
                        f"(get_classifier()), got {type(model).__name__}")
    if labels.dim() != 1:
        labels = labels.argmax(1)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad():
            h = F.relu(features(images, int(getattr(model, "num_stages", 4)))).float()
            w = classifier.weight.float()[labels.to(h.device).long()]            # [B, C]
            cam = torch.einsum("bchw,bc->bhw", h, w)
            if classifier.bias is not None:
                cam = cam + classifier.bias.float()[labels.to(h.device).long()].view(-1, 1, 1)
    finally:
        if was_training:
            model.train()
    cam = F.interpolate(cam.unsqueeze(1), size=images.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    cam = cam - cam.flatten(1).min(1).values.view(-1, 1, 1)
    return cam / cam.flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1)


def class_token_attention(model, images: Tensor, labels: Tensor = None) -> Tensor:
    """``[B, gh, gw]`` float32: the last block's class-token attention over the patches (head mean)."""
    from .transmix import AttentionWatch

    watch = AttentionWatch(model)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad(), watch:
            model(images)
    finally:
        if was_training:
            model.train()
    row = watch.row
    h, w = images.shape[-2:]
    gh = int(round((row.shape[1] * h / w) ** 0.5))
    return row.view(row.shape[0], gh, row.shape[1] // gh)


#: name -> ``fn(model, images, labels) -> Tensor``
SIGNALS: Dict[str, Callable[..., Tensor]] = {
    "saliency": input_saliency,
    "activation": last_activation,
    "cam": semantic_percent_map,
    "attention": class_token_attention,
}


def compute_signals(names: Sequence[str], model, images: Tensor, labels: Tensor) -> Dict[str, Tensor]:
    """``{name: signal}`` for each name of ``names`` (``SIGNALS``), a sentence for an unknown one."""
    out = {}
    for n in names:
        if n not in SIGNALS:
            raise ValueError(f"unknown model signal {n!r}; known: {', '.join(sorted(SIGNALS))}")
        out[n] = SIGNALS[n](model, images, labels)
    return out


__all__ = ["SIGNALS", "class_token_attention", "compute_signals", "input_gradient", "input_saliency",
           "saliency_and_clean_loss", "last_activation",
           "semantic_percent_map"]
