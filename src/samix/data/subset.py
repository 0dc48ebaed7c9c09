"""Class-balanced random subsets of a dataset (labels read without decoding images)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from torch.utils.data import Subset

from samix._checks import check_int

from .base import dataset_labels

__all__ = ["stratified_subset"]


def stratified_subset(dataset, n_total: Optional[int] = None, per_class: Optional[int] = None,
                      seed: int = 0) -> Subset:
    """A class-balanced random subset of ``dataset``, deterministic for a given ``seed``.

    Give exactly one of ``per_class`` (that many samples of every class) or ``n_total``
    (``n_total // K`` per class for the ``K`` classes present; the ``n_total % K`` left over
    go, one each, to classes drawn at random with the same seed). Within each class the
    samples are a uniform random draw without replacement (NumPy PCG64 seeded with
    ``seed``); the returned indices are sorted. Labels are read without decoding images
    (:func:`dataset_labels`).

    Raises ``ValueError`` when a class has fewer samples than asked for, or when labels
    are negative (e.g. STL-10's unlabeled split).
    """
    if (n_total is None) == (per_class is None):
        raise ValueError(f"give exactly one of n_total or per_class, got n_total={n_total!r}, "
                         f"per_class={per_class!r}")
    check_int("seed", seed)
    labels = dataset_labels(dataset)
    if labels.size == 0:
        raise ValueError("stratified_subset needs a non-empty dataset")
    if labels.min() < 0:
        raise ValueError(f"stratified_subset needs labels >= 0, got {labels.min()} (unlabeled samples?)")
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(int(seed))
    quota = np.empty(len(classes), dtype=np.int64)
    if per_class is not None:
        quota[:] = check_int("per_class", per_class, low=1)
    else:
        n_total = check_int("n_total", n_total, low=1)
        quota[:] = n_total // len(classes)
        quota[rng.choice(len(classes), size=n_total % len(classes), replace=False)] += 1
    short = counts < quota
    if short.any():
        i = int(np.flatnonzero(short)[0])
        raise ValueError(f"class {int(classes[i])} has {int(counts[i])} samples, fewer than the {int(quota[i])} "
                         f"asked for ({int(short.sum())} class(es) short)")
    # Random order, then stable sort by class: each class's samples appear in random order;
    # keep the first quota[class] of each.
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    cls_idx = np.searchsorted(classes, labels[order])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - starts[cls_idx]
    chosen = np.sort(order[rank < quota[cls_idx]])
    return Subset(dataset, chosen.tolist())
