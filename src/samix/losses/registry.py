"""The loss registry: :func:`build_loss` ``(name, **options)`` -> :class:`MixupLoss`, a callable
``loss(logits, labels, lam=None, index=None)`` with its options checked and bound."""

from __future__ import annotations

import inspect
from typing import Callable, Optional

from torch import Tensor

from samix._registry import Registry

from ._common import _OPTION_CHECKS, LamLike, _mixed_targets, _prepare
from .classification import mixed_binary_cross_entropy, mixed_cross_entropy, soft_target_cross_entropy
from .decoupled import decoupled_mixup_loss
from .samix_losses import eta_balanced_loss, pbce_loss

__all__ = ["LOSSES", "MixupLoss", "build_loss", "list_losses", "register_loss"]


def _soft_ce_entry(logits: Tensor, labels: Tensor, lam: LamLike = None, index: Optional[Tensor] = None,
                   label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    """``soft_ce``: soft-target CE of the mixed targets. With ``lam=None`` and
    ``index=None`` and probability ``labels [B, K]`` (e.g. a mixer's output
    targets), the labels are the targets, used as they are."""
    _OPTION_CHECKS["reduction"](reduction)
    label_smoothing = _OPTION_CHECKS["label_smoothing"](label_smoothing)
    if lam is None and index is None and isinstance(labels, Tensor) and labels.dim() == 2 \
            and label_smoothing == 0:
        return soft_target_cross_entropy(logits, labels, reduction=reduction)
    z, labels, lam_t, index_t = _prepare(logits, labels, lam, index)
    targets = _mixed_targets(labels, lam_t, index_t, z.shape[1], label_smoothing, z.dtype)
    return soft_target_cross_entropy(z, targets, reduction=reduction)


#: Classification losses ``fn(logits, labels, lam, index, **options)`` by name.
LOSSES: Registry[Callable[..., Tensor]] = Registry("loss")
_LOSSES = LOSSES.entries


def register_loss(name: str, fn: Optional[Callable[..., Tensor]] = None):
    """Register ``fn(logits, labels, lam, index, **options)`` under ``name``
    (usable as a decorator). A name can be registered once."""
    return LOSSES.register(name) if fn is None else LOSSES.register(name, fn)


register_loss("ce", mixed_cross_entropy)
register_loss("soft_ce", _soft_ce_entry)
register_loss("bce", mixed_binary_cross_entropy)
register_loss("decoupled", decoupled_mixup_loss)
register_loss("pbce", pbce_loss)
register_loss("eta_balanced", eta_balanced_loss)


def list_losses() -> list:
    """Names :func:`build_loss` accepts, sorted."""
    return LOSSES.list()


class MixupLoss:
    """A classification loss with its options bound: ``loss(logits, labels, lam=None, index=None)``.

    Built by :func:`build_loss`; ``name`` and ``options`` are kept for logging.
    """

    def __init__(self, name: str, fn: Callable[..., Tensor], options: dict) -> None:
        self.name = name
        self.fn = fn
        self.options = dict(options)

    def __call__(self, logits: Tensor, labels: Tensor, lam: LamLike = None,
                 index: Optional[Tensor] = None, weight: Optional[Tensor] = None) -> Tensor:
        """The mean loss; with ``weight [B]`` the mean of ``weight_i * loss_i`` (a policy's per-sample
        weight, :attr:`samix.mixing.MixResult.weight`)."""
        if weight is None:
            return self.fn(logits, labels, lam, index, **self.options)
        rows = self.fn(logits, labels, lam, index, **{**self.options, "reduction": "none"})
        return (rows * weight.to(device=rows.device, dtype=rows.dtype)).mean()

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"MixupLoss({self.name!r}{', ' if opts else ''}{opts})"


def build_loss(name: str, *, decoupled_eta: Optional[float] = None, **options) -> MixupLoss:
    """Build a registered classification loss by name.

    ``decoupled_eta`` (a config's ``loss.decoupled_eta``) puts Decoupled Mixup on top of ``name``
    (``"ce"`` -> DM(CE), ``"bce"`` -> DM(BCE)) with that eta: the same as
    ``build_loss("decoupled", loss=name, eta=decoupled_eta, **options)``.

    Names: ``"ce"`` (:func:`mixed_cross_entropy`), ``"soft_ce"`` (soft-target
    CE of the mixed targets), ``"bce"`` (:func:`mixed_binary_cross_entropy`),
    ``"decoupled"`` (:func:`decoupled_mixup_loss`), ``"pbce"``
    (:func:`pbce_loss`), ``"eta_balanced"`` (:func:`eta_balanced_loss`).
    ``options`` are that function's keyword arguments; they are checked here
    (an unknown name or option, or a bad value, raises at build time).
    """
    if decoupled_eta is not None:
        if name not in ("ce", "bce"):
            raise ValueError(f"decoupled_eta applies to the loss 'ce' (DM(CE)) or 'bce' (DM(BCE)), got {name!r}")
        clash = sorted({"eta", "loss"} & set(options))
        if clash:
            raise ValueError(f"option {clash[0]!r} conflicts with decoupled_eta (which sets eta and takes the base "
                             f"loss from the name); drop one of them")
        options = {**options, "loss": name, "eta": float(decoupled_eta)}
        name = "decoupled"
    fn = LOSSES.get(name)
    params = inspect.signature(fn).parameters
    accepted = [p for p in list(params)[4:]
                if params[p].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    for key, value in options.items():
        if key not in accepted:
            raise TypeError(f"loss {name!r} got an unexpected option {key!r}; it accepts {accepted}")
        if key in _OPTION_CHECKS:
            _OPTION_CHECKS[key](value)
    if name == "decoupled" and options.get("loss", "ce") == "ce" and (
            options.get("target_threshold") is not None or options.get("sum_classes", False)):
        raise ValueError("target_threshold and sum_classes apply to loss='bce' only")
    return MixupLoss(name, fn, options)
