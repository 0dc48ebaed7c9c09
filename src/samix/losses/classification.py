"""Classification losses of mixup: soft-target CE, mixed CE and mixed BCE (conventions: :mod:`samix.losses`)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import _OPTION_CHECKS, LamLike, _check_matrix, _compute_dtype, _mixed_targets, _prepare, _reduce

__all__ = ["mixed_binary_cross_entropy", "mixed_cross_entropy", "soft_target_cross_entropy"]


def soft_target_cross_entropy(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    r"""Cross-entropy against soft targets.

    ``loss_i = - sum_k t_ik * log softmax(z_i)_k``

    ``targets`` is float ``[B, K]`` (normally rows summing to 1, e.g. the
    output of a mixer; any non-negative weights are accepted). Computed in
    float32 (float64 for float64 logits) with ``log_softmax``, so fp16/bf16
    and very large logits are safe.
    """
    _OPTION_CHECKS["reduction"](reduction)
    b, k = _check_matrix("logits", logits)
    _check_matrix("targets", targets)
    if tuple(targets.shape) != (b, k):
        raise ValueError(f"targets must have the shape of logits {(b, k)}, got {tuple(targets.shape)}")
    dt = _compute_dtype(logits)
    logp = F.log_softmax(logits.to(dt), dim=1)
    loss = -(targets.to(device=logits.device, dtype=dt) * logp).sum(dim=1)
    return _reduce(loss, reduction)


def _mixed_ce_rows(z: Tensor, labels: Tensor, lam: Tensor, index: Tensor, label_smoothing: float) -> Tensor:
    """Per-sample mixed CE of already validated inputs (``z`` in the compute dtype)."""
    logp = F.log_softmax(z, dim=1)
    if labels.dim() == 2:
        targets = _mixed_targets(labels, lam, index, z.shape[1], label_smoothing, z.dtype)
        return -(targets * logp).sum(dim=1)
    y = labels.long()
    nll_a = -logp.gather(1, y.unsqueeze(1)).squeeze(1)
    nll_b = -logp.gather(1, y[index].unsqueeze(1)).squeeze(1)
    loss = torch.lerp(nll_b, nll_a, lam)  # lam * nll_a + (1 - lam) * nll_b
    if label_smoothing > 0:
        # smoothed CE(y) = (1 - eps) * nll_y + eps * mean_k(-log p_k); the uniform part is lam-independent
        loss = (1.0 - label_smoothing) * loss - label_smoothing * logp.mean(dim=1)
    return loss


def mixed_cross_entropy(logits: Tensor, labels: Tensor, lam: LamLike = None, index: Optional[Tensor] = None,
                        label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    r"""Mixed cross-entropy (mixup's loss, samix.txt Eq. 3).

    ``loss_i = lam * CE_eps(z, a) + (1 - lam) * CE_eps(z, b)``, with
    ``CE_eps(z, y) = -(1 - eps) log softmax(z)_y - eps * mean_k log softmax(z)_k``
    (``eps = label_smoothing``; torch's ``F.cross_entropy`` smoothing).

    This is exactly ``soft_target_cross_entropy(logits, mix_targets(...))``
    with the targets of :func:`samix.targets.mix_targets` (CE is linear in the
    target). With probability ``labels [B, K]`` the loss is computed that way.
    Its gradient w.r.t. the logits is ``softmax(z) - t`` (``t`` the mixed target).
    """
    _OPTION_CHECKS["reduction"](reduction)
    label_smoothing = _OPTION_CHECKS["label_smoothing"](label_smoothing)
    z, labels, lam_t, index_t = _prepare(logits, labels, lam, index)
    return _reduce(_mixed_ce_rows(z, labels, lam_t, index_t, label_smoothing), reduction)


def _mixed_bce_rows(z: Tensor, labels: Tensor, lam: Tensor, index: Tensor, label_smoothing: float,
                    target_threshold: Optional[float], sum_classes: bool) -> Tensor:
    targets = _mixed_targets(labels, lam, index, z.shape[1], label_smoothing, z.dtype)
    if target_threshold is not None:
        targets = (targets > target_threshold).to(z.dtype)
    per_class = F.binary_cross_entropy_with_logits(z, targets, reduction="none")
    return per_class.sum(dim=1) if sum_classes else per_class.mean(dim=1)


def mixed_binary_cross_entropy(logits: Tensor, labels: Tensor, lam: LamLike = None,
                               index: Optional[Tensor] = None, label_smoothing: float = 0.0,
                               target_threshold: Optional[float] = None, sum_classes: bool = False,
                               reduction: str = "mean") -> Tensor:
    r"""Mixed binary cross-entropy ("MBCE", the ResNet-strikes-back recipe, samix.txt Table 4).

    Sigmoid BCE of every class against the mixed soft target
    ``t = lam * s(y_a) + (1 - lam) * s(y_b)`` (``s``: label smoothing with
    ``eps / K`` off-value, as in timm)::

        t_k <- 1[t_k > target_threshold]             (only if target_threshold is set)
        l_ik = -t_k log sigmoid(z_k) - (1 - t_k) log(1 - sigmoid(z_k))
        loss_i = mean_k l_ik      (sum_classes=False, default: timm's and RSB's "mean over all")
        loss_i = sum_k  l_ik      (sum_classes=True)

    ``reduction`` then acts over the batch, so the default ``"mean"``
    averages over both batch and classes. RSB A3 uses ``target_threshold=0.2``
    (both classes of a mix with ``0.2 < lam < 0.8`` become positives).
    """
    _OPTION_CHECKS["reduction"](reduction)
    label_smoothing = _OPTION_CHECKS["label_smoothing"](label_smoothing)
    target_threshold = _OPTION_CHECKS["target_threshold"](target_threshold)
    _OPTION_CHECKS["sum_classes"](sum_classes)
    z, labels, lam_t, index_t = _prepare(logits, labels, lam, index)
    rows = _mixed_bce_rows(z, labels, lam_t, index_t, label_smoothing, target_threshold, sum_classes)
    return _reduce(rows, reduction)
