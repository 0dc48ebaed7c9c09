"""Encoder pruning: keep a backbone's stem and stages ``1..l`` (what a pre-trained Mixer reads), drop the rest."""

from __future__ import annotations

from typing import Dict, List

from torch import Tensor, nn

__all__ = ["encoder_state_dict", "prune_encoder"]


def _needed_modules(model: nn.Module, stage: int) -> List[nn.Module]:
    if not hasattr(model, "stem") or not hasattr(model, "stages"):
        raise TypeError(f"the encoder must be a samix Backbone (stem + stages), got {type(model).__name__}")
    stages = model.stages
    return [model.stem] + [stages[i] for i in range(stage)]


def encoder_state_dict(model: nn.Module, stage: int) -> Dict[str, Tensor]:
    """The entries of ``model.state_dict()`` that belong to its stem and stages ``1..stage``.

    Membership is by tensor identity, so it works for backbones whose ``stem``/``stages`` are views
    over another module tree (the timm adapters). Values are detached tensors (not copies).
    """
    keep = {id(t) for m in _needed_modules(model, stage) for t in [*m.parameters(), *m.buffers()]}
    return {k: v.detach() for k, v in model.state_dict(keep_vars=True).items() if id(v) in keep}


def prune_encoder(model: nn.Module, stage: int) -> nn.Module:
    """Replace, in place, every submodule that is not part of the stem or of stages ``1..stage``
    (and has no such descendant) by ``nn.Identity``; returns ``model``.

    ``model.features(x, stage)`` is unchanged; later stages and the head are gone.
    """
    needed = {id(m) for top in _needed_modules(model, stage) for m in top.modules()}

    def walk(module: nn.Module) -> bool:  # True if module or a descendant is needed
        if id(module) in needed:
            return True
        any_needed = False
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            if walk(child):
                any_needed = True
            else:
                module._modules[name] = nn.Identity()
        return any_needed

    walk(model)
    return model
