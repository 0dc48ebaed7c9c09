"""The model-running half of ManifoldMix (:mod:`samix.mixing.manifoldmix` draws the layer and mixes a map).

One step with a :class:`~samix.mixing.manifoldmix.ManifoldMix` policy and a samix
:class:`~samix.models.Backbone`, ``k`` drawn by the policy (or given)::

    k = 0:   logits = model(mix(x))
    k >= 1:  logits = model.forward_from(mix(model.features(x, k)), k)
    targets = lam * y + (1 - lam) * y[index]

For ViT backbones, whose class token lives beside the patch map, the model's ``mix_extra_state(index,
lam)`` hook mixes it with the same weights, so the whole token sequence is mixed.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from samix.mixing.base import check_images
from samix.mixing.manifoldmix import ManifoldMix, ManifoldMixResult, check_stages
from samix.targets import check_labels, mix_targets


def manifold_forward(mixer: ManifoldMix, model: nn.Module, images: Tensor, labels: Tensor,
                     stage: Optional[int] = None) -> Tuple[Tensor, Tensor, ManifoldMixResult]:
    """One manifold-mixup forward: ``(logits, targets, result)``.

    ``stage`` overrides the policy's random draw. ``targets`` are float32 ``[B, K]`` soft targets (rows
    sum to 1); ``result.images`` is the mixed map, ``result.stage`` the layer used.
    """
    check_images(images)
    check_labels(labels, images.shape[0], mixer.num_classes)
    k = mixer.sample_stage() if stage is None else check_stages(stage)[0]
    if k > 0:
        if not (callable(getattr(model, "features", None)) and callable(getattr(model, "forward_from", None))):
            raise TypeError(f"model must be a samix Backbone (with features/forward_from) to mix at stage {k}, "
                            f"got {type(model).__name__}")
        num_stages = int(getattr(model, "num_stages", 4))
        if k > num_stages:
            raise ValueError(f"stage {k} is beyond the model's {num_stages} stages (stages={mixer.stages})")
        result = mixer.mix(model.features(images, k))
        hook = getattr(model, "mix_extra_state", None)
        if callable(hook):
            hook(result.index, result.lam)
        logits = model.forward_from(result.images, k)
    else:
        result = mixer.mix(images)
        logits = model(result.images)
    targets = mix_targets(labels, result, num_classes=mixer.num_classes,
                          label_smoothing=mixer.label_smoothing, dtype=torch.float32)
    return logits, targets, ManifoldMixResult(result.images, result.lam, result.index, None, stage=k)
