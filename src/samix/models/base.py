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

from typing import Callable, Sequence

from torch import Tensor, nn

from samix._checks import check_int
from samix._registry import Registry


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
    check_int("stage", stage, low=0, high=num_stages, type_error=ValueError)


#: Backbone builders ``fn(num_classes=, in_chans=, width=, **kwargs) -> Backbone`` by name.
MODELS: Registry[Callable[..., Backbone]] = Registry("model")
#: Builders of name families ``"<prefix>:<name>"`` by prefix (e.g. ``"timm"``).
MODEL_NAMESPACES: Registry[Callable[..., Backbone]] = Registry("model namespace")
_MODELS = MODELS.entries
_NAMESPACES = MODEL_NAMESPACES.entries


def register_model(name: str):
    """Decorator: register a backbone builder as ``name``."""
    return MODELS.register(name)


def register_model_namespace(prefix: str):
    """Register a builder for a family of names ``"<prefix>:<name>"`` (e.g. ``"timm:resnet18"``);
    it is called as ``builder(name, num_classes=..., in_chans=..., width=..., **kwargs)``."""
    return MODEL_NAMESPACES.register(prefix)


def list_models() -> list[str]:
    """Names of the registered backbones, sorted (``"<prefix>:<name>"`` families not included)."""
    return MODELS.list()


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
    if name in MODELS:
        model = MODELS.build(name, num_classes=num_classes, in_chans=in_chans, width=width, **kwargs)
    elif isinstance(name, str) and name.partition(":")[0] in MODEL_NAMESPACES and name.partition(":")[2]:
        prefix, _, sub = name.partition(":")
        model = MODEL_NAMESPACES.build(prefix, sub, num_classes=num_classes, in_chans=in_chans, width=width,
                                       **kwargs)
    else:
        raise MODELS.unknown(name, also=[f"{p}:<name>" for p in MODEL_NAMESPACES.list()])
    if pretrained is not None:
        from .weights import load_pretrained

        load_pretrained(model, pretrained)
    return model
