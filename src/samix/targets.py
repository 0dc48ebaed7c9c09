"""Labels -> (smoothed) soft targets for a :class:`~samix.mixing.MixResult`.

``targets = lam * smooth(y) + (1 - lam) * smooth(y[index])`` with
``smooth(p) = (1 - eps) * p + eps / K``; every row sums to 1.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def probability_tolerance(dtype: torch.dtype) -> float:
    """How far from 1 a row of probabilities may sum: 1e-3 (float32/64), 1e-2 (float16/bfloat16)."""
    return 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-3


def check_probability_rows(probs: Tensor) -> None:
    """Probability labels ``[B, K]``: every row finite, non-negative and summing to 1 (within
    :func:`probability_tolerance`); otherwise ``ValueError`` naming the first bad row and what is wrong."""
    p = probs.detach().float()
    sums = p.sum(dim=1)
    bad_finite = ~torch.isfinite(p).all(dim=1)
    bad_sign = (p < 0).any(dim=1)
    bad_sum = (sums - 1).abs() > probability_tolerance(probs.dtype)
    bad = bad_finite | bad_sign | bad_sum
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        why = ("holds NaN or Inf" if bad_finite[i] else "has a negative entry" if bad_sign[i]
               else f"sums to {float(sums[i]):.6g}")
        raise ValueError(f"probability labels must be finite, non-negative rows summing to 1 (within "
                         f"{probability_tolerance(probs.dtype):g}); row {i} {why}: {[round(v, 4) for v in p[i].tolist()[:10]]}"
                         f"{' ...' if p.shape[1] > 10 else ''}")


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
        check_probability_rows(labels)
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

    ``result`` is a :class:`~samix.mixing.MixResult` (or anything with ``lam``/``index``). A result with a
    per-sample ``weight`` (SnapMix) gives rows scaled by it: ``w_a p(y) + w_b p(y[index])``, which sum to
    ``w_a + w_b`` (the policy's definition), so soft-target cross-entropy against them is its loss. A
    result with ``sources`` (outputs of several inputs, Co-Mixup) gives ``sources @ p(y)``.
    """
    probs = to_probs(labels, num_classes, label_smoothing, dtype)
    sources = getattr(result, "sources", None)
    if sources is not None:  # outputs of several inputs (Co-Mixup): their shares of each input's label
        return sources.to(device=probs.device, dtype=dtype) @ probs
    lam = result.lam.to(device=probs.device, dtype=dtype).unsqueeze(1)
    index = result.index.to(probs.device)
    out = torch.lerp(probs.index_select(0, index), probs, lam)  # index_select: ~8x faster than probs[index] on CPU
    weight = getattr(result, "weight", None)
    return out if weight is None else out * weight.to(device=out.device, dtype=dtype).unsqueeze(1)
