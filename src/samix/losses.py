"""Losses for mixup training: mixed CE / soft-target CE / mixed BCE, Decoupled
Mixup, SAMix's pBCE and eta-balanced loss, mixup infoNCE and non-parametric BCE.

Conventions (the same as :class:`samix.mixing.MixResult`)
------------------------------------------------------------
* ``logits``: float ``[B, K]`` (any float dtype; fp16/bf16 are up-cast, see below).
* ``labels``: integer class ids ``[B]`` or probability rows ``[B, K]``.
* ``lam``: float tensor ``[B]`` (or a 0-d tensor / Python number, broadcast to
  the batch): the share of the ORIGINAL sample ``i`` in mixed sample ``i``.
* ``index``: long ``[B]``: the partner of sample ``i`` is ``index[i]``, so
  ``1 - lam[i]`` weights class ``y[index[i]]``.
* ``lam=None`` / ``index=None`` mean "no mixing" (``lam = 1``,
  ``index = arange(B)``); every loss also works with an explicit ``lam = 1``,
  ``index = arange(B)``.
* For a sample ``i`` write ``a = y[i]``, ``b = y[index[i]]`` and
  ``lam = lam[i]``; ``z`` is its row of logits.

Numerics: every loss is computed in float32 (float64 stays float64), whatever
the dtype of the inputs, through ``log_softmax`` / ``logsigmoid`` /
``logsumexp`` / ``binary_cross_entropy_with_logits``, so values and gradients
stay finite for logits of magnitude 1e4 and for fp16/bf16 inputs. The result is
float32 (float64 for float64 inputs); gradients flow back in the input dtype.

Validation: shapes and dtypes are always checked (``TypeError`` for a wrong
type/dtype, ``ValueError`` for a wrong shape or value, both naming the
argument). Value checks that would read tensor contents (label range,
``lam`` in [0, 1], ``index`` range) run on CPU tensors only: on an accelerator
they would force a host synchronisation every step; there an out-of-range
label or index trips the device-side bounds check instead.

``reduction``: ``"mean"`` (over the batch), ``"sum"`` or ``"none"`` (one value
per sample, ``[B]``).

Registry: :func:`build_loss` ``(name, **options)`` returns a callable
``loss(logits, labels, lam=None, index=None)``; :func:`list_losses` gives the
names.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from samix.targets import to_probs

__all__ = [
    "soft_target_cross_entropy",
    "mixed_cross_entropy",
    "mixed_binary_cross_entropy",
    "decoupled_mixup_loss",
    "pbce_loss",
    "eta_balanced_loss",
    "mixup_infonce",
    "nonparametric_bce",
    "MixupLoss",
    "register_loss",
    "build_loss",
    "list_losses",
    "REDUCTIONS",
]

REDUCTIONS = ("mean", "sum", "none")
DECOUPLED_BASES = ("ce", "bce")
PBCE_VARIANTS = ("softmax", "sigmoid")

LamLike = Union[Tensor, float, int, None]


# ---------------------------------------------------------------------------- validation helpers
def _check_float(name: str, value, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
    return value


def _check_threshold(value) -> Optional[float]:
    if value is None:
        return None
    return _check_float("target_threshold", value, low=0.0, high=1.0, high_open=True)


#: Validators of the keyword options, shared by the functions and :func:`build_loss`.
_OPTION_CHECKS: Dict[str, Callable] = {
    "reduction": lambda v: _check_choice("reduction", v, REDUCTIONS),
    "label_smoothing": lambda v: _check_float("label_smoothing", v, low=0.0, high=1.0),
    "eta": lambda v: _check_float("eta", v, low=0.0),
    "target_threshold": _check_threshold,
    "sum_classes": lambda v: _check_bool("sum_classes", v),
    "loss": lambda v: _check_choice("loss", v, DECOUPLED_BASES),
    "variant": lambda v: _check_choice("variant", v, PBCE_VARIANTS),
    "temperature": lambda v: _check_float("temperature", v, low=0.0, low_open=True),
    "normalize": lambda v: _check_bool("normalize", v),
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
    value = _check_float("lam", lam, low=0.0, high=1.0)
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


# ---------------------------------------------------------------------------- classification losses
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


# ---------------------------------------------------------------------------- instance-level losses
def _check_embeddings(name: str, x, batch: Optional[int], dim: Optional[int]) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(x.shape)}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name} must have {batch} rows (the batch size), got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns (the embedding size), got shape {tuple(x.shape)}")


def _embed(x: Tensor, dt: torch.dtype, device, normalize: bool) -> Tensor:
    x = x.to(device=device, dtype=dt)
    return F.normalize(x, dim=1) if normalize else x


def mixup_infonce(z_m: Tensor, keys: Tensor, index: Optional[Tensor], lam: LamLike,
                  temperature: float = 0.2, queue: Optional[Tensor] = None, normalize: bool = True,
                  reduction: str = "mean") -> Tensor:
    r"""Mixup infoNCE (samix.txt Eq. 2 and Eq. 4), the instance-level mixed loss.

    ``z_m [B, D]``: embeddings of the mixed samples (mixed sample ``i`` mixes
    source ``i`` with share ``lam`` and source ``index[i]`` with ``1 - lam``).
    ``keys [B, D]``: embeddings of the sources (in SAMix the *other* view,
    from the momentum encoder: the cross-view objective). ``queue [Q, D]``:
    optional extra negatives (a MoCo dictionary). With the dictionary
    ``d = [keys; queue]`` (``B + Q`` entries) and ``s_ik = z_m,i . d_k / t``::

        NCE(i, k) = -log( exp(s_ik) / sum_c exp(s_ic) )
        loss_i    = lam * NCE(i, i) + (1 - lam) * NCE(i, index[i])

    i.e. a soft-target CE over the dictionary whose target puts ``lam`` on
    key ``i`` and ``1 - lam`` on key ``index[i]``; every other key of the batch
    and of the queue is a negative. ``normalize=True`` L2-normalises
    ``z_m``, ``keys`` and ``queue`` first (cosine similarities, as MoCo).
    Gradients flow into every tensor given; detach keys/queue yourself when
    they come from a momentum encoder. ``lam=None``/``index=None``: no mixing
    (plain infoNCE with in-batch negatives).
    """
    _OPTION_CHECKS["reduction"](reduction)
    temperature = _OPTION_CHECKS["temperature"](temperature)
    _OPTION_CHECKS["normalize"](normalize)
    _check_embeddings("z_m", z_m, None, None)
    b, d = z_m.shape
    if b < 1:
        raise ValueError("z_m must hold at least one sample, got an empty batch")
    _check_embeddings("keys", keys, b, d)
    if queue is not None:
        _check_embeddings("queue", queue, None, d)
    dt = _compute_dtype(z_m)
    device = z_m.device
    lam_t = _as_lam(lam, b, device, dt)
    index_t = _as_index(index, b, device)
    q = _embed(z_m, dt, device, normalize)
    dictionary = _embed(keys, dt, device, normalize)
    if queue is not None:
        dictionary = torch.cat([dictionary, _embed(queue, dt, device, normalize)], dim=0)
    logp = F.log_softmax(q @ dictionary.T / temperature, dim=1)
    rows = torch.arange(b, device=device)
    loss = -torch.lerp(logp[rows, index_t], logp[rows, rows], lam_t)
    return _reduce(loss, reduction)


def nonparametric_bce(z_m: Tensor, z_i: Tensor, z_j: Tensor, lam: LamLike, temperature: float = 0.2,
                      normalize: bool = True, reduction: str = "mean") -> Tensor:
    r"""Non-parametric binary cross-entropy of SAMix-I, the local term ``l+`` (samix.txt Eq. 7).

    ``z_m``: embeddings of the mixed samples; ``z_i``, ``z_j``: embeddings of
    their two sources (``z_j = keys[index]``), all ``[B, D]``::

        s_i = z_m . z_i / t,   s_j = z_m . z_j / t
        p_{m,i} = exp(s_i) / (exp(s_i) + exp(s_j)) = sigmoid(s_i - s_j)
        loss    = -lam log p_{m,i} - (1 - lam) log p_{m,j}

    ``normalize=True`` L2-normalises the three inputs first. When
    ``z_i == z_j`` (no mixing) ``p = 1/2`` and the loss is the constant
    ``log 2`` with zero gradient.
    """
    _OPTION_CHECKS["reduction"](reduction)
    temperature = _OPTION_CHECKS["temperature"](temperature)
    _OPTION_CHECKS["normalize"](normalize)
    _check_embeddings("z_m", z_m, None, None)
    b, d = z_m.shape
    if b < 1:
        raise ValueError("z_m must hold at least one sample, got an empty batch")
    _check_embeddings("z_i", z_i, b, d)
    _check_embeddings("z_j", z_j, b, d)
    dt = _compute_dtype(z_m)
    device = z_m.device
    lam_t = _as_lam(lam, b, device, dt)
    q = _embed(z_m, dt, device, normalize)
    s_i = (q * _embed(z_i, dt, device, normalize)).sum(dim=1) / temperature
    s_j = (q * _embed(z_j, dt, device, normalize)).sum(dim=1) / temperature
    diff = s_i - s_j
    loss = -(lam_t * F.logsigmoid(diff) + (1.0 - lam_t) * F.logsigmoid(-diff))
    return _reduce(loss, reduction)


# ---------------------------------------------------------------------------- registry
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


_LOSSES: Dict[str, Callable[..., Tensor]] = {}


def register_loss(name: str, fn: Optional[Callable[..., Tensor]] = None):
    """Register ``fn(logits, labels, lam, index, **options)`` under ``name``
    (usable as a decorator). A name can be registered once."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")

    def deco(f):
        if name in _LOSSES and _LOSSES[name] is not f:
            raise ValueError(f"a loss named {name!r} is already registered")
        _LOSSES[name] = f
        return f

    return deco if fn is None else deco(fn)


register_loss("ce", mixed_cross_entropy)
register_loss("soft_ce", _soft_ce_entry)
register_loss("bce", mixed_binary_cross_entropy)
register_loss("decoupled", decoupled_mixup_loss)
register_loss("pbce", pbce_loss)
register_loss("eta_balanced", eta_balanced_loss)


def list_losses() -> list:
    """Names :func:`build_loss` accepts, sorted."""
    return sorted(_LOSSES)


class MixupLoss:
    """A classification loss with its options bound: ``loss(logits, labels, lam=None, index=None)``.

    Built by :func:`build_loss`; ``name`` and ``options`` are kept for logging.
    """

    def __init__(self, name: str, fn: Callable[..., Tensor], options: dict) -> None:
        self.name = name
        self.fn = fn
        self.options = dict(options)

    def __call__(self, logits: Tensor, labels: Tensor, lam: LamLike = None,
                 index: Optional[Tensor] = None) -> Tensor:
        return self.fn(logits, labels, lam, index, **self.options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"MixupLoss({self.name!r}{', ' if opts else ''}{opts})"


def build_loss(name: str, **options) -> MixupLoss:
    """Build a registered classification loss by name.

    Names: ``"ce"`` (:func:`mixed_cross_entropy`), ``"soft_ce"`` (soft-target
    CE of the mixed targets), ``"bce"`` (:func:`mixed_binary_cross_entropy`),
    ``"decoupled"`` (:func:`decoupled_mixup_loss`), ``"pbce"``
    (:func:`pbce_loss`), ``"eta_balanced"`` (:func:`eta_balanced_loss`).
    ``options`` are that function's keyword arguments; they are checked here
    (an unknown name or option, or a bad value, raises at build time).
    """
    if not isinstance(name, str) or name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {list_losses()}")
    fn = _LOSSES[name]
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
