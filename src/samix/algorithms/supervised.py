"""Supervised classification: vanilla, any static batch mixer, and manifold mixing.

One step on a batch ``(images, labels)``::

    vanilla:   loss = L(model(x), y)
    static:    r = mixer.mix(x);  loss = L(model(r.images), y, r.lam, r.index)
    guided:    (policies with ``requires``, e.g. PuzzleMix) r = mixer.mix_with_model(model, x, y): the
               signals they read (a saliency map, ...) from the model first (samix.mixing.signals), same loss
    relabel:   (policies with ``relabels``, e.g. TransMix) lambda re-weighted from the forward pass of the
               mixed images (``mixer.watch(model)``), same loss
    manifold:  (policies with ``mixes_features``) mix a hidden map inside the model
               (:func:`samix.algorithms.manifold.manifold_forward`), same loss

``L`` is the configured mixed loss (:func:`samix.losses.build_loss`), called as
``L(logits, labels, lam, index)``; without mixing ``lam = 1`` and ``index = arange``.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from .base import Algorithm, register_algorithm, split_batch
from .manifold import manifold_forward


@register_algorithm("supervised")
class Supervised(Algorithm):
    def forward(self, batch) -> Dict[str, Tensor]:
        images, labels = split_batch(batch)
        b = images.shape[0]
        weight = None  # a policy's per-sample loss weight (SnapMix), None for the rest
        if self.mixer is None:
            logits = self.model(images)
            lam = torch.ones(b, device=images.device)
            index = torch.arange(b, device=images.device)
        elif self.mixer.mixes_features:
            logits, _, result = manifold_forward(self.mixer, self.model, images, labels)
            lam, index = result.lam, result.index
        else:
            result = self.mixer.mix_with_model(self.model, images, labels)
            with self.mixer.watch(self.model, labels) as watch:  # a no-op but for policies that relabel (TransMix)
                logits = self.model(result.images)
            result = watch.relabel(result)
            lam, index = result.lam, result.index
            weight = result.weight
            if result.sources is not None:  # outputs of several inputs: the loss against their soft targets
                from samix.targets import mix_targets

                labels = mix_targets(labels, result, num_classes=self.num_classes)
                lam, index = torch.ones(b, device=images.device), torch.arange(b, device=images.device)
        loss = self.loss_fn(logits, labels, lam, index) if weight is None else \
            self.loss_fn(logits, labels, lam, index, weight=weight)
        extra = None if self.mixer is None or self.mixer.mixes_features else result.extra_loss
        if extra is not None:  # a saliency pass's clean loss (clean_lam): part of the step
            return {"loss": loss + extra, "loss_clean": extra.detach()}
        return {"loss": loss}
