"""Labels -> (smoothed) soft targets for a :class:`~samix.mixing.MixResult`.

``targets = lam * smooth(y) + (1 - lam) * smooth(y[index])`` with
``smooth(p) = (1 - eps) * p + eps / K``; every row sums to 1.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def check_labels(labels, batch_size: int, num_classes: Optional[int]) -> None:
    """Raise a clear error for labels that do not fit a batch of ``batch_size`` images."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.shape[0:1] != (batch_size,):
        raise ValueError(
            f"labels must have one entry per image: expected batch size {batch_size}, "
            f"got labels of shape {tuple(labels.shape)}"
        )
    if labels.dim() == 1:
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(f"integer labels must have an integer dtype, got {labels.dtype}")
        if num_classes is None:
            raise ValueError("num_classes is required to turn integer labels into targets (got None)")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, num_classes={num_classes}), got values in [{lo}, {hi}]")
    elif labels.dim() == 2:
        if not labels.is_floating_point():
            raise TypeError(f"probability labels [B, K] must be floating point, got {labels.dtype}")
        if num_classes is not None and labels.shape[1] != num_classes:
            raise ValueError(
                f"probability labels must have num_classes={num_classes} columns, got {labels.shape[1]}"
            )
    else:
        raise ValueError(f"labels must be int [B] or probabilities [B, K], got shape {tuple(labels.shape)}")


def to_probs(labels: Tensor, num_classes: Optional[int], label_smoothing: float = 0.0,
             dtype: torch.dtype = torch.float32) -> Tensor:
    """Integer labels ``[B]`` or probabilities ``[B, K]`` -> smoothed probability rows ``[B, K]``."""
    if labels.dim() == 1:
        probs = torch.zeros(labels.shape[0], num_classes, dtype=dtype, device=labels.device)
        probs.scatter_(1, labels.long().unsqueeze(1), 1.0)
    else:
        probs = labels.to(dtype)
    if label_smoothing > 0:
        k = probs.shape[1]
        probs = probs * (1.0 - label_smoothing) + label_smoothing / k
    return probs


def mix_targets(labels: Tensor, result, num_classes: Optional[int] = None, label_smoothing: float = 0.0,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Soft targets of a mixed batch: ``lam * p(y) + (1 - lam) * p(y[index])``.

    ``result`` is a :class:`~samix.mixing.MixResult` (or anything with ``lam``/``index``).
    """
    probs = to_probs(labels, num_classes, label_smoothing, dtype)
    lam = result.lam.to(device=probs.device, dtype=dtype).unsqueeze(1)
    index = result.index.to(probs.device)
    return torch.lerp(probs.index_select(0, index), probs, lam)  # index_select: ~8x faster than probs[index] on CPU
