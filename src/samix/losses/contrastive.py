"""Instance-level (contrastive) mixup losses: mixup infoNCE and SAMix-I's non-parametric BCE."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import _OPTION_CHECKS, LamLike, _as_index, _as_lam, _compute_dtype, _reduce

__all__ = ["cross_view_mixup_infonce", "mixup_infonce", "moco_infonce", "nonparametric_bce"]


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


def _moco_nce_rows(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """Per-row ``-log(exp(q.k/t) / (exp(q.k/t) + sum_n exp(q.n/t)))`` over the queue's negatives (inputs
    already normalised and in the compute dtype)."""
    pos = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([pos, q @ queue.T], dim=1) / temperature
    return -F.log_softmax(logits, dim=1)[:, 0]


def _prepare_moco(q: Tensor, k: Tensor, queue: Tensor, normalize: bool):
    _check_embeddings("q", q, None, None)
    b, d = q.shape
    if b < 1:
        raise ValueError("q must hold at least one sample, got an empty batch")
    _check_embeddings("k", k, b, d)
    _check_embeddings("queue", queue, None, d)
    dt = _compute_dtype(q)
    return b, dt, _embed(q, dt, q.device, normalize), _embed(k, dt, q.device, normalize), \
        _embed(queue, dt, q.device, normalize)


def moco_infonce(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2, normalize: bool = True,
                 reduction: str = "mean") -> Tensor:
    r"""MoCo's infoNCE: each query ``q_i`` against its own key ``k_i`` (the positive) and the queue's
    entries (the negatives); other keys of the batch are not in the dictionary::

        NCE(q_i, k_i) = -log( exp(q_i . k_i / t) / (exp(q_i . k_i / t) + sum_n exp(q_i . n / t)) )

    ``q [B, D]``, ``k [B, D]``, ``queue [Q, D]``; ``normalize`` L2-normalises all three first. Gradients
    flow into every tensor given: detach the keys and the queue (momentum encoder) yourself.
    """
    _OPTION_CHECKS["reduction"](reduction)
    temperature = _OPTION_CHECKS["temperature"](temperature)
    _OPTION_CHECKS["normalize"](normalize)
    _, _, qn, kn, nn_ = _prepare_moco(q, k, queue, normalize)
    return _reduce(_moco_nce_rows(qn, kn, nn_, temperature), reduction)


def cross_view_mixup_infonce(z_m: Tensor, keys: Tensor, index: Tensor, lam: LamLike, queue: Tensor,
                             temperature: float = 0.2, normalize: bool = True, reduction: str = "mean") -> Tensor:
    r"""The mixed term of MoCo with instance mixup (samix.txt A.5.1, Fig. 8)::

        loss_i = lam_i * NCE(z_m,i, k_i) + (1 - lam_i) * NCE(z_m,i, k_index[i])

    with :func:`moco_infonce`'s NCE (one positive, the queue's negatives). ``z_m [B, D]``: embeddings of
    the mixed samples (sample ``i`` holds a share ``lam_i`` of source ``i`` and ``1 - lam_i`` of source
    ``index[i]``); ``keys [B, D]``: the momentum encoder's embeddings of the sources -- of the *other*
    view in the cross-view pipeline. With ``lam = 1`` it is :func:`moco_infonce` exactly.
    """
    _OPTION_CHECKS["reduction"](reduction)
    temperature = _OPTION_CHECKS["temperature"](temperature)
    _OPTION_CHECKS["normalize"](normalize)
    b, dt, zn, kn, nn_ = _prepare_moco(z_m, keys, queue, normalize)
    lam_t = _as_lam(lam, b, z_m.device, dt)
    index_t = _as_index(index, b, z_m.device)
    own = _moco_nce_rows(zn, kn, nn_, temperature)
    partner = _moco_nce_rows(zn, kn[index_t], nn_, temperature)
    return _reduce(torch.lerp(partner, own, lam_t), reduction)
