"""The uniform backbone interface every model of samix follows.

A classifier is ``stem -> stage 1 -> stage 2 -> stage 3 -> stage 4 -> head``::

    h0 = model.features(x, 0)           # stem output
    hl = model.features(x, l)           # feature map after stage l (l = 1..4), [B, C_l, H_l, W_l]
    logits = model.forward_from(hl, l)  # continue from stage l to the logits
    logits = model(x)                   # == model.forward_from(model.features(x, 0), 0)

``model.stage_channels[l - 1]`` is ``C_l``. Learnable mixers (AutoMix, SAMix)
read stage ``l``; ManifoldMix mixes ``h_k`` for a random ``k`` and continues with
``forward_from``. Vision transformers reshape their tokens to a map.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch
from torch import Tensor, nn


class Backbone(nn.Module):
    """Base class: subclasses set ``stem``, ``stages`` (ModuleList of 4), ``stage_channels`` and
    implement :meth:`forward_head` (pooling + classifier on the stage-4 map)."""

    num_stages: int = 4
    stage_channels: Sequence[int] = ()
    num_classes: int = 0

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.stem(x)

    def forward_stage(self, h: Tensor, stage: int) -> Tensor:
        return self.stages[stage - 1](h)

    def forward_head(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def features(self, x: Tensor, stage: int) -> Tensor:
        """Feature map after ``stage`` (0 = stem output, 1..4 = after that stage)."""
        _check_stage(stage, self.num_stages)
        h = self.forward_stem(x)
        for s in range(1, stage + 1):
            h = self.forward_stage(h, s)
        return h

    def forward_from(self, h: Tensor, stage: int) -> Tensor:
        """Logits from the feature map after ``stage``."""
        _check_stage(stage, self.num_stages)
        for s in range(stage + 1, self.num_stages + 1):
            h = self.forward_stage(h, s)
        return self.forward_head(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_from(self.forward_stem(x), 0)


def _check_stage(stage: int, num_stages: int) -> None:
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage <= num_stages:
        raise ValueError(f"stage must be an int in [0, {num_stages}], got {stage!r}")


_MODELS: Dict[str, Callable[..., Backbone]] = {}
_NAMESPACES: Dict[str, Callable[..., Backbone]] = {}


def register_model(name: str):
    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return deco


def register_model_namespace(prefix: str):
    """Register a builder for a family of names ``"<prefix>:<name>"`` (e.g. ``"timm:resnet18"``);
    it is called as ``builder(name, num_classes=..., in_chans=..., width=..., **kwargs)``."""

    def deco(fn):
        if prefix in _NAMESPACES:
            raise ValueError(f"model namespace {prefix!r} is already registered")
        _NAMESPACES[prefix] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def build_model(name: str, num_classes: int, in_chans: int = 3, width: float = 1.0, pretrained=None,
                **kwargs) -> Backbone:
    """Build a registered backbone (or ``"<namespace>:<name>"``, e.g. ``"timm:resnet18"``).

    ``pretrained``: a local ``.safetensors`` / ``.pt`` state dict loaded with
    :func:`samix.models.weights.load_pretrained` (a classifier of another shape is skipped).
    Unknown names raise ``ValueError`` listing the known ones.
    """
    if pretrained is not None:  # fail on a bad path before building a large model
        from .weights import check_weights_path

        pretrained = check_weights_path(pretrained)
    if isinstance(name, str) and name in _MODELS:
        model = _MODELS[name](num_classes=num_classes, in_chans=in_chans, width=width, **kwargs)
    elif isinstance(name, str) and name.partition(":")[0] in _NAMESPACES and name.partition(":")[2]:
        prefix, _, sub = name.partition(":")
        model = _NAMESPACES[prefix](sub, num_classes=num_classes, in_chans=in_chans, width=width, **kwargs)
    else:
        spaces = "".join(f", {p}:<name>" for p in sorted(_NAMESPACES))
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}{spaces}")
    if pretrained is not None:
        from .weights import load_pretrained

        load_pretrained(model, pretrained)
    return model
