"""Shared pieces of the mixup losses: option checks, argument validation and preparation
(``logits``, ``labels``, ``lam``, ``index``), reduction and mixed soft targets.

The conventions they enforce are stated once in :mod:`samix.losses`.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Union

import torch
from torch import Tensor

from samix._checks import check_bool, check_choice, check_number
from samix.targets import to_probs

REDUCTIONS = ("mean", "sum", "none")
DECOUPLED_BASES = ("ce", "bce")
PBCE_VARIANTS = ("softmax", "sigmoid")

LamLike = Union[Tensor, float, int, None]

# The names these helpers had when every loss lived in one module.
_check_float = check_number
_check_choice = check_choice
_check_bool = check_bool


def _check_threshold(value) -> Optional[float]:
    if value is None:
        return None
    return check_number("target_threshold", value, low=0.0, high=1.0, high_open=True)


#: Validators of the keyword options, shared by the functions and :func:`~samix.losses.build_loss`.
_OPTION_CHECKS: Dict[str, Callable] = {
    "reduction": lambda v: check_choice("reduction", v, REDUCTIONS),
    "label_smoothing": lambda v: check_number("label_smoothing", v, low=0.0, high=1.0),
    "eta": lambda v: check_number("eta", v, low=0.0),
    "target_threshold": _check_threshold,
    "sum_classes": lambda v: check_bool("sum_classes", v),
    "loss": lambda v: check_choice("loss", v, DECOUPLED_BASES),
    "variant": lambda v: check_choice("variant", v, PBCE_VARIANTS),
    "temperature": lambda v: check_number("temperature", v, low=0.0, low_open=True),
    "normalize": lambda v: check_bool("normalize", v),
}


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _on_cpu(t: Tensor) -> bool:
    return t.device.type == "cpu"


def _check_matrix(name: str, x, min_cols: int = 1) -> tuple:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [B, K], got shape {tuple(x.shape)}")
    b, k = x.shape
    if b < 1:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(x.shape)}")
    if k < min_cols:
        raise ValueError(f"{name} must have at least {min_cols} columns, got shape {tuple(x.shape)}")
    return b, k


def _check_labels(labels, batch: int, num_classes: int, allow_probs: bool = True) -> Tensor:
    """Integer ``[B]`` labels in ``[0, K)`` or (when allowed) float ``[B, K]`` probability rows."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() == 1:
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels [B] must have an integer dtype, got {labels.dtype}")
        if labels.shape[0] != batch:
            raise ValueError(f"labels must have one entry per row of logits: expected shape ({batch},), "
                             f"got {tuple(labels.shape)}")
        if _on_cpu(labels) and labels.numel():
            lo, hi = (int(v) for v in torch.aminmax(labels))
            if lo < 0 or hi >= num_classes:
                raise ValueError(f"labels must lie in [0, {num_classes}) (the number of logit columns), "
                                 f"got values in [{lo}, {hi}]")
        return labels
    if labels.dim() == 2:
        if not allow_probs:
            raise TypeError("this loss needs integer class labels [B] (it works on the two mixed classes); "
                            f"got probability rows of shape {tuple(labels.shape)}")
        if not labels.is_floating_point():
            raise TypeError(f"probability labels [B, K] must be floating point, got {labels.dtype}")
        if tuple(labels.shape) != (batch, num_classes):
            raise ValueError(f"probability labels must have the shape of logits {(batch, num_classes)}, "
                             f"got {tuple(labels.shape)}")
        return labels
    raise ValueError(f"labels must be integer [B] or probabilities [B, K], got shape {tuple(labels.shape)}")


def _as_lam(lam: LamLike, batch: int, device, dtype) -> Tensor:
    """``lam`` as a ``[B]`` tensor of ``dtype`` on ``device`` (``None`` -> ones)."""
    if lam is None:
        return torch.ones(batch, device=device, dtype=dtype)
    if isinstance(lam, Tensor):
        if not lam.is_floating_point():
            raise TypeError(f"lam must be a floating-point tensor, got dtype {lam.dtype}")
        if lam.dim() > 1 or (lam.dim() == 1 and lam.shape[0] not in (1, batch)):
            raise ValueError(f"lam must be a float, a 0-d tensor or a [B={batch}] tensor, "
                             f"got shape {tuple(lam.shape)}")
        if _on_cpu(lam) and lam.numel():
            lo, hi = (float(v) for v in torch.aminmax(lam))
            if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
                raise ValueError(f"lam must lie in [0, 1], got values in [{lo}, {hi}]")
        return lam.to(device=device, dtype=dtype).reshape(-1).expand(batch)
    value = check_number("lam", lam, low=0.0, high=1.0)
    return torch.full((batch,), value, device=device, dtype=dtype)


def _as_index(index, batch: int, device) -> Tensor:
    """``index`` as a long ``[B]`` tensor on ``device`` (``None`` -> ``arange(B)``)."""
    if index is None:
        return torch.arange(batch, device=device)
    if not isinstance(index, Tensor):
        raise TypeError(f"index must be a torch.Tensor (long [B]) or None, got {type(index).__name__}")
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"index must have an integer dtype, got {index.dtype}")
    if tuple(index.shape) != (batch,):
        raise ValueError(f"index must have shape ({batch},) (one partner per sample), got {tuple(index.shape)}")
    if _on_cpu(index):
        lo, hi = (int(v) for v in torch.aminmax(index))
        if lo < 0 or hi >= batch:
            raise ValueError(f"index must lie in [0, {batch}), got values in [{lo}, {hi}]")
    return index.to(device=device, dtype=torch.long)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _prepare(logits, labels, lam, index, allow_probs=True, min_classes=1):
    """Validate the common arguments; return ``(z, labels, lam, index)`` on the logits' device,
    ``z`` and ``lam`` in the compute dtype."""
    b, k = _check_matrix("logits", logits, min_cols=min_classes)
    labels = _check_labels(labels, b, k, allow_probs=allow_probs).to(logits.device)
    dt = _compute_dtype(logits)
    lam_t = _as_lam(lam, b, logits.device, dt)
    index_t = _as_index(index, b, logits.device)
    return logits.to(dt), labels, lam_t, index_t


def _mixed_targets(labels: Tensor, lam: Tensor, index: Tensor, num_classes: int,
                   label_smoothing: float, dtype: torch.dtype) -> Tensor:
    """``lam * s(p) + (1 - lam) * s(p[index])`` with ``s`` the label smoothing of :mod:`samix.targets`."""
    probs = to_probs(labels, num_classes, label_smoothing, dtype)
    return torch.lerp(probs[index], probs, lam.unsqueeze(1))
