"""CIFAR-10 / CIFAR-100: torchvision's classes, with pickles read by a restricted unpickler
(:func:`~samix.data.safe_pickle.safe_unpickle`) and shapes checked.

Layout: ``ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``ROOT/cifar-100-python/{train, test, meta}``. Only file *existence* is checked by default;
``verify=True`` also checks torchvision's MD5 sums.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from .base import DatasetInfo, _missing, _not_found, _resolve_base, register_dataset
from .safe_pickle import safe_unpickle

__all__ = ["CIFAR10", "CIFAR100"]


class _SafeCIFARMixin:
    """CIFAR loading that never runs pickle code and checks shapes; see the module docstring."""

    def __init__(self, root, train: bool = True, transform=None, target_transform=None,
                 verify: bool = False) -> None:
        tvd.VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.train = train
        base = Path(self.root) / self.base_folder
        if verify and not self._check_integrity():
            raise ValueError(f"MD5 check failed for the files under {base} (verify=True): "
                             "the files are corrupted or are not the official release")
        data, targets = [], []
        for file_name, _ in (self.train_list if train else self.test_list):
            path = base / file_name
            entry = safe_unpickle(path)
            if not isinstance(entry, dict) or "data" not in entry:
                raise ValueError(f"{path}: expected a dict with 'data' and labels, got {type(entry).__name__}")
            labels = entry.get("labels", entry.get("fine_labels"))
            arr = np.asarray(entry["data"])
            if labels is None or arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 3 * 32 * 32 \
                    or len(labels) != arr.shape[0]:
                raise ValueError(f"{path}: expected uint8 'data' [N, 3072] and N 'labels'/'fine_labels', got "
                                 f"data {arr.dtype} {arr.shape} and {None if labels is None else len(labels)} labels")
            data.append(arr)
            targets.extend(int(t) for t in labels)
        self.data = np.ascontiguousarray(np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        self.targets = targets
        self._load_meta()
        if targets and (min(targets) < 0 or max(targets) >= len(self.classes)):
            raise ValueError(f"labels under {base} must lie in [0, {len(self.classes)}), "
                             f"got [{min(targets)}, {max(targets)}]")

    def _load_meta(self) -> None:
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        meta = safe_unpickle(path)
        if not isinstance(meta, dict) or self.meta["key"] not in meta:
            raise ValueError(f"{path}: expected a dict with key {self.meta['key']!r}")
        self.classes = [c.decode("latin1") if isinstance(c, bytes) else str(c) for c in meta[self.meta["key"]]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class CIFAR10(_SafeCIFARMixin, tvd.CIFAR10):
    """torchvision's CIFAR-10 read safely (see :class:`_SafeCIFARMixin`); ``verify`` checks MD5 sums."""


class CIFAR100(_SafeCIFARMixin, tvd.CIFAR100):
    """torchvision's CIFAR-100 (fine labels) read safely; ``verify`` checks MD5 sums."""


def _cifar_builder(cls, tarball: str):
    def build(root: Path, split: str, transform, verify: bool = False) -> Dataset:
        base = _resolve_base(root, cls.base_folder)
        names = [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        missing = _missing([base / n for n in names])
        if missing:
            raise _not_found(
                cls.__name__, base, missing,
                f"Get the python-version tarball https://www.cs.toronto.edu/~kriz/{tarball} and extract it "
                f"under {base.parent} (tar xzf {tarball} -C {base.parent}), or, when online, run "
                f"torchvision.datasets.{cls.__name__}({str(base.parent)!r}, download=True) once.")
        return cls(base.parent, train=(split == "train"), transform=transform, verify=bool(verify))

    return build


register_dataset("cifar10", DatasetInfo(10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "cifar"))(
    _cifar_builder(CIFAR10, "cifar-10-python.tar.gz"))
register_dataset("cifar100", DatasetInfo(100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "cifar"))(
    _cifar_builder(CIFAR100, "cifar-100-python.tar.gz"))
