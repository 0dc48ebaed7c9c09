"""Losses on generated masks and the linear weight schedule (AutoMix Eq. 6, SAMix A.2).

Notation: ``s_i`` is the mask of sample ``i`` (weight of the original sample),
``mu_i = (1/HW) sum_{h,w} s_{i,h,w}`` its mean, ``lam_i`` its mixing ratio.

- :func:`mask_l1_loss` (AutoMix): ``mean_i max(|lam_i - mu_i| - margin, 0)``.
- :func:`mask_l2_loss` (the L2 ablation of AutoMix Table 5; a documented
  reading): the squared hinge ``mean_i max(|lam_i - mu_i| - margin, 0)^2``, so
  that ``margin`` keeps the meaning of a tolerance on the mean in both losses
  (``max((lam - mu)^2 - margin, 0)`` would make ``margin=0.1`` a tolerance of 0.32).
- :func:`mask_variance_loss` (SAMix; a documented sign). samix.txt A.2 prints
  ``l_sigma = (1/WH) sum_{w,h} (mu_i - s_{w,h})^2`` - the variance of the mask -
  and says the term "encourages the sparsity of learned masks" next to the
  "discrimination (e.g., variance)" of the mixed sample. Minimising the variance
  as printed is done by a flat mask ``s = mu`` - global mixup, the trivial
  solution the papers fight - so the term must *reward* variance. The loss
  taken is ``mean_i (1/4 - var_i)``: it has exactly the gradient of ``-var``
  (the printed term with its sign flipped, same scale next to the L1 term),
  and it is non-negative because a mask in ``[0, 1]`` has
  ``var <= mu (1 - mu) <= 1/4``. It is ``1/4`` for a flat mask and ``0`` for a
  binary mask covering half of the image.
- :func:`generator_mask_loss`: the mask loss of a training pipeline in one call (hinge, optional
  variance term), on every sample's mean (``reduction="sample"``) or on the batch mean
  (``"batch"``, the reference implementation: the whole batch is one mask, the hinge compares its
  mean with the mean lambda and the variance is about the batch mean).
- :func:`linear_weight`: ``start + (end - start) * progress``, the weight
  (``gamma`` in AutoMix, ``beta`` in SAMix) that decreases from 0.1 to 0.

All losses compute in float32 and return a 0-d tensor (``reduction="mean"`` or
``"sum"``) or the per-sample values ``[B]`` (``reduction="none"``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from samix._checks import check_choice, check_number, check_probability

__all__ = ["generator_mask_loss", "linear_weight", "mask_l1_loss", "mask_l2_loss", "mask_mean",
           "mask_variance_loss"]

REDUCTIONS = ("mean", "sum", "none")
MASK_LOSSES = ("none", "l1", "l2")
MASK_LOSS_REDUCTIONS = ("batch", "sample")


def _check_mask(mask) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if not mask.is_floating_point():
        raise TypeError(f"mask must be a floating-point tensor, got {mask.dtype}")
    if mask.dim() < 2 or mask.shape[0] < 1 or mask[0].numel() < 1:
        raise ValueError(f"mask must be [B, ...] (e.g. [B, 1, H, W]) with B >= 1 and at least one value "
                         f"per sample, got shape {tuple(mask.shape)}")
    return mask


def _check_lam(lam, b: int, device) -> Tensor:
    if isinstance(lam, bool):
        raise TypeError("lam must be a float tensor [B] or a number, got bool")
    if isinstance(lam, (int, float)):
        lam = torch.tensor(float(lam))
    if not isinstance(lam, Tensor) or not lam.is_floating_point():
        raise TypeError(f"lam must be a float tensor [B] or a number, got "
                        f"{type(lam).__name__ if not isinstance(lam, Tensor) else lam.dtype}")
    if lam.dim() == 0:
        lam = lam.expand(b)
    if lam.shape != (b,):
        raise ValueError(f"lam must have shape [B]=[{b}] (or be a scalar), got {tuple(lam.shape)}")
    return lam.to(device=device, dtype=torch.float32)


def _check_margin(margin) -> float:
    return check_number("margin", margin, low=0.0, type_error=ValueError)


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    check_choice("reduction", reduction, REDUCTIONS)
    return values


def mask_mean(mask: Tensor) -> Tensor:
    """``mu_i``: the float32 mean of each mask over all non-batch dimensions, ``[B]``."""
    mask = _check_mask(mask)
    return mask.float().flatten(1).mean(dim=1)


def mask_l1_loss(mask: Tensor, lam, margin: float = 0.1, reduction: str = "mean") -> Tensor:
    """AutoMix's mask loss ``max(|lam_i - mu_i| - margin, 0)``, averaged over the batch.

    Args:
        mask: ``[B, 1, H, W]`` (any ``[B, ...]``) weight of the original sample.
        lam: float ``[B]`` or a number: the ratio the mask was generated for.
        margin: tolerance ``epsilon`` on the mean (0.1 in the papers).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample ``[B]``).
    """
    mu = mask_mean(mask)
    lam_t = _check_lam(lam, mu.shape[0], mu.device)
    margin = _check_margin(margin)
    return _reduce((lam_t - mu).abs().sub(margin).clamp_min(0), reduction)


def mask_l2_loss(mask: Tensor, lam, margin: float = 0.1, reduction: str = "mean") -> Tensor:
    """The L2 ablation: the squared hinge ``max(|lam_i - mu_i| - margin, 0)^2`` (see the module docstring)."""
    mu = mask_mean(mask)
    lam_t = _check_lam(lam, mu.shape[0], mu.device)
    margin = _check_margin(margin)
    return _reduce((lam_t - mu).abs().sub(margin).clamp_min(0).square(), reduction)


def mask_variance_loss(mask: Tensor, reduction: str = "mean") -> Tensor:
    """SAMix's variance term with the sign that rewards non-flat masks: ``1/4 - var_i``,
    ``var_i = (1/HW) sum_{h,w} (mu_i - s_{i,h,w})^2`` (population variance).

    In ``[0, 1/4]`` for masks in ``[0, 1]``; its gradient is ``-grad(var_i)``, so
    minimising it makes masks more binary (see the module docstring for why the
    printed sign is flipped).
    """
    s = _check_mask(mask).float().flatten(1)
    var = (s - s.mean(dim=1, keepdim=True)).square().mean(dim=1)
    return _reduce(0.25 - var, reduction)


def generator_mask_loss(mask_raw: Tensor, lam, loss: str = "l1", margin: float = 0.1, variance: bool = False,
                        reduction: str = "batch"):
    """The unweighted mask loss of AutoMix / SAMix on a generator's raw masks, or ``None`` for ``loss="none"``.

    Args:
        mask_raw: ``[B, 1, H, W]`` masks before lambda adjusting.
        lam: float ``[B]`` or a number: the lambdas they were generated for.
        loss: ``"l1"`` (:func:`mask_l1_loss`), ``"l2"`` (:func:`mask_l2_loss`) or ``"none"``.
        margin: the hinge's tolerance ``eps``.
        variance: add SAMix's :func:`mask_variance_loss`.
        reduction: ``"batch"``: one hinge on ``|mean(lam) - mean(mu)|`` and the variance about the batch
            mean (the reference); ``"sample"``: each sample's own hinge and variance, averaged.
    """
    check_choice("loss", loss, MASK_LOSSES)
    check_choice("reduction", reduction, MASK_LOSS_REDUCTIONS)
    if loss == "none":
        return None
    mask_raw = _check_mask(mask_raw)
    lam_t = _check_lam(lam, mask_raw.shape[0], mask_raw.device)
    if reduction == "batch":
        mask_raw = mask_raw.reshape(1, 1, -1, mask_raw.shape[-1])
        lam_t = lam_t.mean().view(1)
    fn = mask_l1_loss if loss == "l1" else mask_l2_loss
    m = fn(mask_raw, lam_t, margin=margin)
    return m + mask_variance_loss(mask_raw) if variance else m


def linear_weight(progress, start: float = 0.1, end: float = 0.0) -> float:
    """``start + (end - start) * progress`` for ``progress`` in ``[0, 1]`` (the fraction of training done).

    The mask-loss weight of AutoMix (``gamma``) and SAMix (``beta``): 0.1 at the start,
    linearly down to 0 at the end.
    """
    if isinstance(progress, Tensor) and progress.numel() == 1:
        progress = progress.item()
    progress = check_probability("progress", progress)
    start = check_number("start", start, type_error=ValueError)
    end = check_number("end", end, type_error=ValueError)
    return start + (end - start) * progress
