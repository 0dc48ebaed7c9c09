"""SAMix's class-level losses: pBCE (the local term ``l+``) and the eta-balanced loss ``l+ + eta * l-``."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import _OPTION_CHECKS, LamLike, _prepare, _reduce
from .classification import _mixed_ce_rows

__all__ = ["eta_balanced_loss", "pbce_loss"]


def _pbce_rows(z: Tensor, labels: Tensor, lam: Tensor, index: Tensor, variant: str,
               label_smoothing: float = 0.0) -> Tensor:
    a = labels.long()
    b = a[index]
    za = z.gather(1, a.unsqueeze(1)).squeeze(1)
    zb = z.gather(1, b.unsqueeze(1)).squeeze(1)
    same = a == b
    zero = torch.zeros_like(za)
    # the pair's target (lam, 1 - lam), smoothed over the pair's two classes
    ta = lam * (1.0 - label_smoothing) + label_smoothing / 2
    if variant == "softmax":
        d = za - zb
        loss = -(ta * F.logsigmoid(d) + (1.0 - ta) * F.logsigmoid(-d))
        return torch.where(same, zero, loss)
    la = F.binary_cross_entropy_with_logits(za, torch.where(same, torch.ones_like(ta), ta), reduction="none")
    lb = F.binary_cross_entropy_with_logits(zb, 1.0 - ta, reduction="none")
    return la + torch.where(same, zero, lb)


def pbce_loss(logits: Tensor, labels: Tensor, lam: LamLike = None, index: Optional[Tensor] = None,
              variant: str = "softmax", label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    r"""Parametric binary cross-entropy, the local term ``l+`` of SAMix (samix.txt Eq. 6).

    Eq. 6 reads ``l+ = -lam y_{i,a} log p_m - (1 - lam) y_{j,b} log p_m``: a
    binary CE between the two mixed classes ``a`` and ``b`` only. The other
    classes do **not** appear (not even as negatives): the paper calls this the
    *local* term and leaves the other classes to the global term ``l-``
    (mixed CE), which is exactly what the eta-balanced loss adds back.

    ``variant="softmax"`` (default): ``p`` is the softmax restricted to the
    classes present in the pair, i.e. a two-way softmax, the parametric twin
    of the paper's non-parametric BCE (Eq. 7)::

        p_a = exp(z_a) / (exp(z_a) + exp(z_b)) = sigmoid(z_a - z_b)
        l+  = -lam log sigmoid(z_a - z_b) - (1 - lam) log sigmoid(z_b - z_a)

    minimised (for ``0 < lam < 1``) where ``z_a - z_b = log(lam / (1 - lam))``:
    local ``lam``-smoothness between the two classes.

    ``variant="sigmoid"`` (OpenMixup's reading): independent sigmoid BCE
    against the mixed target restricted to the pair's classes::

        l+ = BCE(sigmoid(z_a), lam) + BCE(sigmoid(z_b), 1 - lam)

    The literal ``-lam log sigmoid(z_a) - (1 - lam) log sigmoid(z_b)`` is not
    offered: it has no minimum (it only pushes both logits to +inf) and so no
    ``lam`` smoothness.

    Same-class pairs (``a == b``, including no mixing): the pair holds one
    class with target 1; the two-way softmax over ``{a}`` is 1, so the
    ``"softmax"`` term is 0 (no gradient), and ``"sigmoid"`` gives
    ``BCE(sigmoid(z_a), 1)``.

    ``label_smoothing = eps`` smooths the pair's target over its two classes:
    ``lam -> (1 - eps) * lam + eps / 2`` (and ``1 - lam`` likewise); a
    same-class pair keeps its target 1.

    Needs integer ``labels [B]``.
    """
    _OPTION_CHECKS["reduction"](reduction)
    _OPTION_CHECKS["variant"](variant)
    label_smoothing = _OPTION_CHECKS["label_smoothing"](label_smoothing)
    z, labels, lam_t, index_t = _prepare(logits, labels, lam, index, allow_probs=False)
    return _reduce(_pbce_rows(z, labels, lam_t, index_t, variant, label_smoothing), reduction)


def eta_balanced_loss(logits: Tensor, labels: Tensor, lam: LamLike = None, index: Optional[Tensor] = None,
                      eta: float = 0.5, label_smoothing: float = 0.0, variant: str = "softmax",
                      reduction: str = "mean") -> Tensor:
    r"""SAMix's eta-balanced mixup loss at class level (samix.txt Eq. 8).

    ``l_eta = l+ + eta * l-`` with ``l+ = pbce_loss(..., variant)`` (the two
    mixed classes, local smoothness) and ``l- = mixed_cross_entropy`` (all
    classes, global discrimination); ``label_smoothing`` is passed to both. The paper uses
    ``eta`` in [0, 1]: 0.5 on small datasets (CIFAR, Tiny, CUB), 0.1 on
    ImageNet; any ``eta >= 0`` is accepted.

    Unlike a soft-target CE whose "negative" weight multiplies zero targets,
    ``eta`` scales a term with a non-zero gradient, so the gradient w.r.t. the
    logits is ``grad l+ + eta * grad l-``: changing ``eta`` changes it.
    Needs integer ``labels [B]``.
    """
    _OPTION_CHECKS["reduction"](reduction)
    eta = _OPTION_CHECKS["eta"](eta)
    label_smoothing = _OPTION_CHECKS["label_smoothing"](label_smoothing)
    _OPTION_CHECKS["variant"](variant)
    z, labels, lam_t, index_t = _prepare(logits, labels, lam, index, allow_probs=False)
    local = _pbce_rows(z, labels, lam_t, index_t, variant, label_smoothing)
    glob = _mixed_ce_rows(z, labels, lam_t, index_t, label_smoothing)
    return _reduce(local + eta * glob, reduction)
