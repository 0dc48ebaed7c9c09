"""Weighted k-nearest-neighbour evaluation of a frozen encoder (the SSL monitor).

Protocol (InstDisc, Wu et al. 2018; as in lightly and VISSL): features are the backbone's pooled
pre-classifier vector (:func:`pooled_features`), L2-normalised; for each test sample the ``k``
training samples of highest cosine similarity ``s`` vote for their label with weight
``exp(s / T)``; a class's score is the sum of its neighbours' weights. Defaults ``k = 200,
T = 0.1`` (lightly, VISSL); solo-learn and OpenMixup use ``k = 20, T = 0.07``.

* :func:`extract_features` -- one pass over a loader (eval mode, no grad, DDP-gathered).
* :func:`knn_predict` -- class scores ``[M, C]``, chunked over test rows (memory ``chunk x N``).
* :func:`knn_accuracy` -- top-1/top-5 in percent from features.
* :func:`knn_evaluate` -- backbone + train/test loaders -> top-1/top-5.

``k`` larger than the training set is clamped to its size. Ties between equal similarities are
broken by ``torch.topk``.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .metrics import _dist_ready, local_sample_limit, topk_correct, unpack_batch

__all__ = ["pooled_features", "extract_features", "knn_predict", "knn_accuracy", "knn_evaluate"]


def pooled_features(backbone: nn.Module, x: Tensor) -> Tensor:
    """The pooled feature vector ``[B, D]`` the classifier would see (no classifier, no dropout in eval).

    ``forward_head(features(x, num_stages), pre_logits=True)`` when the backbone's head takes
    ``pre_logits`` (every samix backbone: :class:`~samix.models._common.ClassifierMixin` pools by
    global average, timm adapters use timm's own pooling, e.g. the class token of a ViT);
    otherwise the global average of the last stage map.
    """
    h = backbone.features(x, backbone.num_stages)
    if "pre_logits" in inspect.signature(backbone.forward_head).parameters:
        out = backbone.forward_head(h, pre_logits=True)
    else:
        out = h.mean((2, 3))
    return out.flatten(1)


def _images_labels(batch) -> Tuple[Tensor, Tensor]:
    if isinstance(batch, dict):
        if "images" not in batch or "labels" not in batch:
            raise TypeError(f"a dict batch must have 'images' and 'labels' keys, got {sorted(batch)}")
        return batch["images"], batch["labels"]
    return unpack_batch(batch)


def _gather_rows(x: Tensor, device: torch.device) -> Tensor:
    """All ranks' rows, interleaved so that rank ``r``'s ``i``-th row lands at ``r + i * W``
    (the dataset order of the engine's ``ShardSampler``; pairing is kept for any sampler)."""
    dist = torch.distributed
    world = dist.get_world_size()
    local = x.to(device)
    n = torch.tensor([local.shape[0]], device=device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    m = max(sizes)
    padded = torch.zeros((m,) + tuple(local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    stacked = torch.stack(parts, 1)  # [m, W, ...]: position i of every rank, rank-major within i
    valid = torch.arange(m, device=device).view(-1, 1) < torch.tensor(sizes, device=device).view(1, -1)
    return stacked[valid].cpu()  # boolean indexing keeps row-major order: i-th of rank 0, 1, ..., W-1


@torch.no_grad()
def _extract_local(backbone, loader, device, normalize, channels_last, amp_dtype, progress):
    from tqdm.auto import tqdm

    limit = local_sample_limit(loader)  # DistributedSampler padding, if any
    autocast = torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    feats, labels, seen = [], [], 0
    was_training = backbone.training
    backbone.eval()
    try:
        for batch in tqdm(loader, desc="features", disable=not progress, leave=False):
            images, y = _images_labels(batch)
            if limit is not None:
                keep = max(0, min(len(y), limit - seen))
                seen += len(y)
                images, y = images[:keep], y[:keep]
                if keep == 0:
                    continue
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                f = pooled_features(backbone, images)
            f = f.float()
            if normalize:
                f = F.normalize(f, dim=1)
            feats.append(f.cpu())
            labels.append(torch.as_tensor(y).long().view(-1).cpu())
    finally:
        backbone.train(was_training)
    if not feats:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


def extract_features(backbone: nn.Module, loader, device, *, normalize: bool = True, channels_last: bool = False,
                     amp_dtype: Optional[torch.dtype] = None, progress: bool = False,
                     gather: bool = True) -> Tuple[Tensor, Tensor]:
    """Pooled features of every sample of ``loader``: ``(features [N, D] float32 CPU, labels [N] long CPU)``.

    The backbone runs in eval mode (BatchNorm uses and keeps its running statistics) under
    ``torch.no_grad``; its previous train/eval mode is restored afterwards. Batches are
    ``(images, labels, ...)`` tuples or dicts with ``"images"``/``"labels"``. ``normalize``:
    L2-normalise each row. ``amp_dtype``: autocast dtype (features are returned as float32).

    Under an initialised ``torch.distributed`` (and ``gather=True``) every rank returns the rows of
    all ranks (``all_gather`` on ``device``, padded to equal length): in dataset order with the
    engine's ``ShardSampler`` (rank ``r`` takes ``r, r + W, ...``); a padding
    ``DistributedSampler`` has its repeated tail dropped first.
    """
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
    if amp_dtype is not None and not (isinstance(amp_dtype, torch.dtype) and amp_dtype.is_floating_point):
        raise TypeError(f"amp_dtype must be a floating torch.dtype or None, got {amp_dtype!r}")
    device = torch.device(device)
    feats, labels = _extract_local(backbone, loader, device, normalize, channels_last, amp_dtype, progress)
    distributed = _dist_ready() and torch.distributed.get_world_size() > 1
    if gather and distributed:
        dim = torch.tensor([feats.shape[1] if feats.numel() else 0], device=device)
        torch.distributed.all_reduce(dim, op=torch.distributed.ReduceOp.MAX)  # a rank may have no rows
        if feats.numel() == 0:
            feats = torch.empty(0, int(dim))
        feats, labels = _gather_rows(feats, device), _gather_rows(labels, device)
    if labels.numel() == 0 and (gather or not distributed):  # a rank's shard may be empty
        raise ValueError("the loader yielded no samples")
    return feats, labels


# ----------------------------------------------------------------------------------------------
# kNN on features.
# ----------------------------------------------------------------------------------------------


def _check_int(name: str, value, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return value


def _check_feats(name: str, x) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] < 1 or not x.is_floating_point():
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a non-empty float [N, D] tensor, got {got}")
    return x


def _check_labels(name: str, y, n: int, num_classes: int) -> Tensor:
    if not isinstance(y, Tensor) or y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        got = f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"{name} must be an int [N] tensor of class indices, got {got}")
    if y.shape[0] != n:
        raise ValueError(f"{name} must have {n} entries (one per feature row), got {y.shape[0]}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise ValueError(f"{name} must be >= 0, got a minimum of {lo}")
    if num_classes < hi + 1:
        raise ValueError(f"num_classes must be >= max({name}) + 1 = {hi + 1}, got {num_classes}")
    return y


def knn_predict(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, num_classes: int, k: int = 200,
                temperature: float = 0.1, chunk: int = 1024) -> Tensor:
    """Weighted-kNN class scores ``[M, num_classes]`` (float32, on ``train_feats``' device).

    ``score[i, c] = sum over the k nearest training rows j with label c of exp(cos(test_i, train_j) / T)``;
    both feature sets are L2-normalised here (idempotent on normalised input). Test rows are
    processed ``chunk`` at a time, so memory is ``O(chunk * N)``; ``k > N`` is clamped to ``N``.
    """
    _check_feats("train_feats", train_feats)
    _check_feats("test_feats", test_feats)
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"test_feats must have the feature dimension of train_feats ({train_feats.shape[1]}), "
                         f"got {test_feats.shape[1]}")
    _check_int("num_classes", num_classes)
    _check_int("k", k)
    _check_int("chunk", chunk)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    _check_labels("train_labels", train_labels, train_feats.shape[0], num_classes)
    device = train_feats.device
    bank = F.normalize(train_feats.float(), dim=1)
    bank_labels = train_labels.to(device).long()
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, test_feats.shape[0], chunk):
        q = F.normalize(test_feats[start : start + chunk].to(device).float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # [m, k]
        weights = (sim / temperature).exp()
        scores = torch.zeros(q.shape[0], num_classes, device=device)
        out.append(scores.scatter_add_(1, bank_labels[idx], weights))
    return torch.cat(out)


def knn_accuracy(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 num_classes: int, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> Dict[str, float]:
    """``{"top1": ..., "top5": ...}`` in percent (0-100) of :func:`knn_predict` on ``test_labels``.

    Top-5 with fewer than 5 classes counts every sample (see :mod:`samix.evaluate.metrics`).
    """
    _check_feats("test_feats", test_feats)
    _check_int("num_classes", num_classes)
    _check_labels("test_labels", test_labels, test_feats.shape[0], num_classes)
    scores = knn_predict(train_feats, train_labels, test_feats, num_classes, k, temperature, chunk)
    hits = topk_correct(scores, test_labels.to(scores.device).long(), (1, 5)).cpu()
    n = test_feats.shape[0]
    return {"top1": 100.0 * float(hits[0]) / n, "top5": 100.0 * float(hits[1]) / n}


def knn_evaluate(backbone: nn.Module, train_loader, test_loader, device, num_classes: int, k: int = 200,
                 temperature: float = 0.1, *, chunk: int = 1024, channels_last: bool = False,
                 amp_dtype: Optional[torch.dtype] = None, progress: bool = False) -> Dict[str, float]:
    """Extract train (memory bank) and test features with :func:`extract_features`, then
    :func:`knn_accuracy`. Returns ``{"top1", "top5", "n_train", "n_test"}``.

    Under DDP every rank gathers the whole bank; each classifies its own test shard and the hit
    counts are all-reduced, so every rank returns the global accuracy.
    """
    _check_int("num_classes", num_classes)
    _check_int("k", k)
    device = torch.device(device)
    kw = dict(normalize=True, channels_last=channels_last, amp_dtype=amp_dtype, progress=progress)
    bank, bank_labels = extract_features(backbone, train_loader, device, **kw)
    test, test_labels = extract_features(backbone, test_loader, device, gather=False, **kw)
    bank = bank.to(device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    if test_labels.numel():
        _check_labels("test_labels", test_labels, test.shape[0], num_classes)
        scores = knn_predict(bank, bank_labels, test, num_classes, k, temperature, chunk)
        sums[:2] = topk_correct(scores, test_labels.to(device), (1, 5)).double()
        sums[2] = test_labels.numel()
    if _dist_ready():
        torch.distributed.all_reduce(sums)
    n = float(sums[2])
    if n <= 0:
        raise ValueError("test_loader yielded no samples")
    return {"top1": 100.0 * float(sums[0]) / n, "top5": 100.0 * float(sums[1]) / n, "n_train": int(bank.shape[0]),
            "n_test": int(n)}
