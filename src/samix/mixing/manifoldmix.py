"""ManifoldMix (Verma et al., ICML 2019): mixup of hidden representations.

One step draws ``lam ~ Beta(alpha, alpha)``, a pairing ``index`` and one layer ``k`` uniformly
from ``stages``, then::

    h      = x                      if k == 0   (the input image)
             model.features(x, k)   if k >= 1   (the map after residual stage k)
    h_mix  = lam * h + (1 - lam) * h[index]
    logits = model(h_mix)                   if k == 0
             model.forward_from(h_mix, k)   if k >= 1
    target = lam * y + (1 - lam) * y[index]

Stage convention: as in the ManifoldMix paper (PreAct ResNet, ``k in {0, 1, 2}``) and OpenMixup's
mixing ResNets (``k in {0, 1, 2, 3}``), ``k = 0`` is the **input image** and ``k >= 1`` the output of
stage ``k`` of a samix :class:`~samix.models.Backbone`; the default ``stages=(0, 1, 2)`` is the
paper's CIFAR setting. Note that this ``0`` is not ``Backbone.features(x, 0)`` (the stem output):
ManifoldMix never mixes the stem output. ``k = 4`` (the last map, i.e. the pooled features, since
pooling is linear) is allowed.

This policy knows no model: it draws the layer (:meth:`ManifoldMix.sample_stage`) and mixes whatever
map it is given (``mixer.mix(h)``; ``mixer(images, labels)`` is plain input mixup, ``k = 0``). Running
the model around the mix is the algorithm's part: :func:`samix.algorithms.manifold.manifold_forward`
(which ``samix train`` uses with ``mixer.name=manifoldmix``). ``lam`` weights the original sample, as everywhere in
samix; ``mode="elem"`` draws one ``lam`` per sample, ``prob`` mixes a batch (or sample) with that
probability. For ViT backbones, whose class token lives beside the patch map, the model's
``mix_extra_state(index, lam)`` hook mixes it with the same weights, so the whole token sequence is
mixed. The papers' recipes use ``alpha=2`` on CIFAR-100 and ``alpha=0.2`` on Tiny/ImageNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import torch

from .base import MixResult
from .mixup import MixUp
from .registry import register_mixer


@dataclass
class ManifoldMixResult(MixResult):
    """A :class:`MixResult` whose ``images`` is the mixed map at ``stage`` (the image itself at 0)."""

    stage: int = 0


def check_stages(stages) -> Tuple[int, ...]:
    if isinstance(stages, int) and not isinstance(stages, bool):
        stages = (stages,)
    if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence):
        raise TypeError(f"stages must be a sequence of ints (layers to mix at), got {type(stages).__name__}")
    stages = tuple(stages)
    if not stages:
        raise ValueError("stages must name at least one layer, got an empty sequence")
    for s in stages:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"stages must hold ints >= 0 (0 = the input image), got {stages!r}")
    if len(set(stages)) != len(stages):
        raise ValueError(f"stages must not repeat a layer, got {stages!r}")
    return stages


@register_mixer("manifoldmix")
class ManifoldMix(MixUp):
    """Mixup of the hidden map at a random stage (see the module docstring).

    Args:
        stages: candidate layers, drawn uniformly per batch (0 = input image, k = after stage k).
        **kwargs: the common mixer arguments (``alpha``, ``num_classes``, ``prob``, ``mode``,
            ``label_smoothing``, ``generator``).
    """

    needs_model = True
    mixes_features = True

    def __init__(self, stages: Union[int, Sequence[int]] = (0, 1, 2), **kwargs) -> None:
        super().__init__(**kwargs)
        self.stages = check_stages(stages)

    def sample_stage(self) -> int:
        """One layer drawn uniformly from ``stages`` with the mixer's generator."""
        if len(self.stages) == 1:
            return self.stages[0]
        i = int(torch.randint(len(self.stages), (1,), generator=self.generator, device=self._gen_device).item())
        return self.stages[i]

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", stages={self.stages})"
