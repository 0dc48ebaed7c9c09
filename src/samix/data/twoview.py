"""Two augmented views of each sample, for contrastive (MoCo-style) self-supervised learning.

>>> from samix.data import TwoViewDataset, build_dataset, build_transform
>>> base = build_dataset("stl10", root, split="unlabeled")            # transform=None: PIL images
>>> t = build_transform("moco", True, "stl10")
>>> ds = TwoViewDataset(base, t, t)                                    # doctest: +SKIP
>>> (view_q, view_k), label = ds[0]

Both views come from the same decoded image, drawn independently (two calls of the
transforms); ``view_q`` feeds the query encoder, ``view_k`` the key (momentum) encoder.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from torch.utils.data import Dataset

from .base import dataset_labels


class TwoViewDataset(Dataset):
    """Wrap ``dataset`` (which should return untransformed images) so that item ``i`` is
    ``((transform_q(img), transform_k(img)), label)``.

    Args:
        dataset: a map-style dataset of ``(image, label)``.
        transform_q: transform of the query view.
        transform_k: transform of the key view; ``None``: the same transform as the
            query view (a second, independent random draw).
        with_index: items are ``((view_q, view_k), label, i)``: the item's index rides along, for methods
            that keep a memory per image (SAMix-C's online clustering).
    """

    def __init__(self, dataset, transform_q: Callable, transform_k: Optional[Callable] = None,
                 with_index: bool = False) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"dataset must be a map-style dataset (with __getitem__ and __len__), "
                            f"got {type(dataset).__name__}")
        if not callable(transform_q):
            raise TypeError(f"transform_q must be callable, got {type(transform_q).__name__}")
        if transform_k is not None and not callable(transform_k):
            raise TypeError(f"transform_k must be callable or None, got {type(transform_k).__name__}")
        self.dataset = dataset
        self.transform_q = transform_q
        self.transform_k = transform_q if transform_k is None else transform_k
        self.with_index = bool(with_index)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        img, label = self.dataset[index]
        views = (self.transform_q(img), self.transform_k(img))
        return (views, label, index) if self.with_index else (views, label)

    @property
    def targets(self) -> np.ndarray:
        """Labels of the wrapped dataset (read without decoding images where possible)."""
        return dataset_labels(self.dataset)
