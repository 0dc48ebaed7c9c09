"""STL-10: torchvision's class over the binary release, needing only the files of the requested
split (sizes checked; ``verify=True`` checks MD5 sums). Unlabeled samples carry label -1.

Layout: ``ROOT/stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision.datasets.utils import check_integrity

from .base import DatasetInfo, _missing, _not_found, _resolve_base, register_dataset

__all__ = ["STL10"]

_STL_FILES = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin",),
    "train+unlabeled": ("train_X.bin", "train_y.bin", "unlabeled_X.bin"),
}
_STL_IMAGE_BYTES = 3 * 96 * 96


class STL10(tvd.STL10):
    """torchvision's STL-10 that needs only the files of the requested split and checks
    their sizes; ``verify=True`` checks their MD5 sums. Unlabeled samples carry label -1."""

    def __init__(self, root, split: str = "train", folds: Optional[int] = None, transform=None,
                 target_transform=None, verify: bool = False) -> None:
        self._verify = bool(verify)
        base = Path(root) / self.base_folder
        files = _STL_FILES[split]
        for x_name, y_name in (("train_X.bin", "train_y.bin"), ("test_X.bin", "test_y.bin")):
            if x_name in files:
                n_img, rest = divmod((base / x_name).stat().st_size, _STL_IMAGE_BYTES)
                n_lab = (base / y_name).stat().st_size
                if rest or n_img != n_lab:
                    raise ValueError(f"{base / x_name}: expected N * {_STL_IMAGE_BYTES} bytes of 3x96x96 images "
                                     f"and {base / y_name} N one-byte labels, got {n_img} images "
                                     f"(+{rest} bytes) and {n_lab} labels")
        super().__init__(root, split=split, folds=folds, transform=transform,
                         target_transform=target_transform, download=False)
        if self.labels is not None and split != "unlabeled":
            labels = self.labels.astype(np.int64)
            known = labels[labels != -1]
            if known.size and (known.min() < 0 or known.max() > 9):
                raise ValueError(f"{base}: STL-10 labels must be 1..10 on disk, got values outside "
                                 f"(min {known.min() + 1}, max {known.max() + 1})")
            self.labels = labels

    def _check_integrity(self) -> bool:
        md5 = dict(self.train_list + self.test_list)
        base = Path(self.root) / self.base_folder
        for name in _STL_FILES[self.split]:
            ok = check_integrity(str(base / name), md5[name]) if self._verify else (base / name).is_file()
            if not ok:
                if self._verify:
                    raise ValueError(f"MD5 check failed for {base / name} (verify=True)")
                return False
        return True


@register_dataset("stl10", DatasetInfo(10, 3, 96, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), "imagenet",
                                       splits=tuple(_STL_FILES), crop_pct=1.0))
def _build_stl10(root: Path, split: str, transform, verify: bool = False, folds: Optional[int] = None) -> Dataset:
    base = _resolve_base(root, STL10.base_folder)
    missing = _missing([base / n for n in _STL_FILES[split]])
    if missing:
        raise _not_found(
            "STL-10", base, missing,
            f"Get the binary release http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz and extract it "
            f"under {base.parent} (tar xzf stl10_binary.tar.gz -C {base.parent}), or, when online, run "
            f"torchvision.datasets.STL10({str(base.parent)!r}, split={split!r}, download=True) once.")
    return STL10(base.parent, split=split, folds=folds, transform=transform, verify=verify)
