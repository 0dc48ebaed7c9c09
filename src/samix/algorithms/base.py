"""What one training step does, behind one interface the engine drives without knowing the method.

The engine wraps an :class:`Algorithm` in DistributedDataParallel (when distributed)
and, every iteration::

    algo.set_progress(step, total_steps)      # schedules inside the method (mask-loss weight, momentum)
    out = ddp_algo(images, labels)            # Algorithm.forward: returns {"loss": scalar, **scalar logs}
    out["loss"].backward(); optimizer.step()
    algo.on_train_step_end()                  # e.g. EMA teacher update

and evaluates ``algo.eval_model()``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor, nn


class Algorithm(nn.Module):
    """Base class of training algorithms (supervised, mixup, AutoMix, SAMix, MoCo, ...).

    Args:
        model: the online network, a :class:`samix.models.Backbone`.
        num_classes: number of classes of the task.
        mixer: an optional batch mixer from :mod:`samix.mixing`.
        loss_fn: the classification loss ``loss_fn(logits, labels, lam, index)``
            (:func:`samix.losses.build_loss`); mixed CE when ``None``.
        generator: the ``torch.Generator`` of this process for the method's own draws.
        **options: method-specific options from the config's ``algorithm`` section,
            checked against :attr:`DEFAULTS`.
    """

    #: option name -> default; subclasses list every option they accept here.
    DEFAULTS: Dict[str, Any] = {}

    def __init__(self, model: nn.Module, num_classes: int, mixer=None, loss_fn=None,
                 generator: Optional[torch.Generator] = None, **options: Any) -> None:
        super().__init__()
        unknown = sorted(set(options) - set(self.DEFAULTS))
        if unknown:
            name = getattr(self, "algorithm_name", type(self).__name__)
            allowed = ", ".join(sorted(self.DEFAULTS)) or "none"
            raise ValueError(f"unknown option(s) {unknown} for algorithm {name!r}; allowed options: {allowed}")
        self.model = model
        self.num_classes = num_classes
        self.mixer = mixer
        if loss_fn is None:
            from samix.losses import build_loss

            loss_fn = build_loss("ce")
        self.loss_fn = loss_fn
        self.generator = generator
        self.options = {**self.DEFAULTS, **options}
        self.step = 0
        self.total_steps = 1

    # -- schedules -------------------------------------------------------------------
    def set_progress(self, step: int, total_steps: int) -> None:
        self.step = int(step)
        self.total_steps = max(int(total_steps), 1)

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(self.step / self.total_steps, 1.0)

    # -- the step --------------------------------------------------------------------
    def forward(self, images: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        raise NotImplementedError

    def on_train_step_end(self) -> None:
        """Called after each optimizer step (EMA updates and the like)."""

    # -- optimisation ----------------------------------------------------------------
    def param_groups(self) -> List[Dict[str, Any]]:
        """Parameter groups for the optimizer. A group may carry ``lr`` and ``min_lr`` of its own
        (e.g. a learnable mixer's), otherwise the engine's values apply."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "name": "model"}]

    def eval_model(self) -> nn.Module:
        """The network whose accuracy is reported."""
        return self.model

    def save_visuals(self, out_dir, epoch: int, images: Tensor, labels: Tensor) -> Optional[str]:
        """Optionally write a PNG (e.g. learned masks) for a fixed batch; returns its path."""
        return None


_ALGORITHMS: Dict[str, type] = {}


def register_algorithm(name: str) -> Callable[[type], type]:
    def deco(cls):
        if name in _ALGORITHMS:
            raise ValueError(f"algorithm {name!r} is already registered")
        cls.algorithm_name = name
        _ALGORITHMS[name] = cls
        return cls

    return deco


def list_algorithms() -> list[str]:
    return sorted(_ALGORITHMS)


def build_algorithm(name: str, **kwargs) -> Algorithm:
    if name not in _ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; known algorithms: {', '.join(list_algorithms())}")
    return _ALGORITHMS[name](**kwargs)
