"""Decoupled Mixup, DM(CE) / DM(BCE): mixed CE/BCE plus the decoupled-softmax regulariser."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import _OPTION_CHECKS, LamLike, _prepare, _reduce
from .classification import _mixed_bce_rows, _mixed_ce_rows

__all__ = ["decoupled_mixup_loss"]


def _log_decoupled_softmax(z: Tensor, keep: Tensor, drop: Tensor, active: Tensor) -> Tensor:
    """``log phi^{keep, drop} = z_keep - logsumexp_{c != drop} z_c`` on active rows
    (inactive rows drop nothing: plain log-softmax, finite, zeroed by the caller)."""
    removed = F.one_hot(drop, z.shape[1]).bool() & active.unsqueeze(1)
    lse = torch.logsumexp(z.masked_fill(removed, float("-inf")), dim=1)
    return z.gather(1, keep.unsqueeze(1)).squeeze(1) - lse


def decoupled_mixup_loss(logits: Tensor, labels: Tensor, lam: LamLike = None, index: Optional[Tensor] = None,
                         eta: float = 1.0, loss: str = "ce", label_smoothing: float = 0.0,
                         target_threshold: Optional[float] = None, sum_classes: bool = False,
                         reduction: str = "mean") -> Tensor:
    r"""Decoupled Mixup, DM(CE) / DM(BCE) (talk-automix-decoupled-mixup.txt; Liu et al., arXiv 2203.10761).

    Decoupled softmax ("remove the competitor"): the probability of class
    ``i`` with class ``j`` removed from the normaliser,

        ``phi^{i,j}(z) = exp(z_i) / sum_{c != j} exp(z_c)``.

    ``loss="ce"`` (DM(CE)), for a sample mixing classes ``a`` and ``b``::

        L_i = L_MCE + eta * m_i * ( -log phi^{a,b}(z) - log phi^{b,a}(z) )

    i.e. the off-diagonal entries of ``y_[a,b]^T log phi(z) y_[a,b]`` with the
    two-hot ``y_[a,b] = y_a + y_b``: each mixed class is asked to be confident
    on its own, against every class except its partner, and *not* weighted by
    ``lam`` (the regulariser is what lets hard mixed samples raise both
    classes beyond ``lam``). ``L_MCE`` is :func:`mixed_cross_entropy`
    (with ``label_smoothing``; the regulariser uses hard labels).

    ``m_i = 1`` only for genuine two-class mixes: ``a != b`` and
    ``0 < lam < 1``. A sample paired with its own class, an unmixed sample
    (``lam`` 0 or 1) or the no-mixing call (``lam=1``, ``index=arange``) has no
    competitor to remove (``phi^{a,a}`` is not a probability) and gets plain
    ``L_MCE``.

    ``loss="bce"`` (DM(BCE), our reading for sigmoid heads): sigmoids are
    already decoupled (no class competes in a normaliser), so
    ``phi^{a,b} -> sigmoid(z_a)``::

        L_i = MBCE_i + eta * m_i * ( -log sigmoid(z_a) - log sigmoid(z_b) ) / n

    with MBCE as :func:`mixed_binary_cross_entropy` (``target_threshold``,
    ``sum_classes``) and ``n = 1`` if ``sum_classes`` else ``K`` (the
    regulariser is normalised like the BCE it is added to).

    Needs integer ``labels [B]`` and at least 2 classes.
    """
    _OPTION_CHECKS["reduction"](reduction)
    eta = _OPTION_CHECKS["eta"](eta)
    _OPTION_CHECKS["loss"](loss)
    label_smoothing = _OPTION_CHECKS["label_smoothing"](label_smoothing)
    target_threshold = _OPTION_CHECKS["target_threshold"](target_threshold)
    _OPTION_CHECKS["sum_classes"](sum_classes)
    if loss == "ce" and (target_threshold is not None or sum_classes):
        raise ValueError("target_threshold and sum_classes apply to loss='bce' only, "
                         f"got loss='ce' with target_threshold={target_threshold}, sum_classes={sum_classes}")
    z, labels, lam_t, index_t = _prepare(logits, labels, lam, index, allow_probs=False, min_classes=2)
    a = labels.long()
    b = a[index_t]
    active = (a != b) & (lam_t > 0) & (lam_t < 1)
    if loss == "ce":
        base = _mixed_ce_rows(z, labels, lam_t, index_t, label_smoothing)
        reg = -(_log_decoupled_softmax(z, a, b, active) + _log_decoupled_softmax(z, b, a, active))
    else:
        base = _mixed_bce_rows(z, labels, lam_t, index_t, label_smoothing, target_threshold, sum_classes)
        za = z.gather(1, a.unsqueeze(1)).squeeze(1)
        zb = z.gather(1, b.unsqueeze(1)).squeeze(1)
        reg = -(F.logsigmoid(za) + F.logsigmoid(zb))
        if not sum_classes:
            reg = reg / z.shape[1]
    reg = torch.where(active, reg, torch.zeros_like(reg))
    return _reduce(base + eta * reg, reduction)
