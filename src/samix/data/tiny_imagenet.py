"""Tiny-ImageNet: ``ImageFolder`` for the train split, :class:`TinyImageNetVal` for the val split.

Layout: ``ROOT/tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG,
val/val_annotations.txt}``. Classes are ``sorted(wnids.txt)`` for both splits (the order
``ImageFolder`` gives the train split), so labels agree across splits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from .base import DatasetInfo, _missing, _not_found, register_dataset

__all__ = ["TinyImageNetVal"]

_TINY_HOW = ("Get http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it under {parent} "
             "(unzip tiny-imagenet-200.zip -d {parent}).")


def _read_wnids(base: Path) -> list[str]:
    path = base / "wnids.txt"
    if not path.is_file():
        raise _not_found("Tiny-ImageNet", base, [path], _TINY_HOW.format(parent=base.parent))
    wnids = [w.strip() for w in path.read_text().splitlines() if w.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise ValueError(f"{path}: expected one distinct WordNet id per line, got {len(wnids)} lines "
                         f"with {len(set(wnids))} distinct ids")
    return sorted(wnids)


class TinyImageNetVal(tvd.VisionDataset):
    """The Tiny-ImageNet validation split: ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``
    (tab-separated ``file, wnid, x0, y0, x1, y1``).

    Args:
        root: the ``tiny-imagenet-200`` folder.
        transform: applied to the RGB PIL image.
        class_to_idx: WordNet id -> label; default ``sorted(wnids.txt)`` (the train split's order).

    Attributes: ``samples`` (path, label), ``targets``, ``classes``, ``class_to_idx`` and ``boxes``
    (int64 ``[N, 4]`` bounding boxes ``x0, y0, x1, y1`` in pixels, as published).
    """

    def __init__(self, root, transform=None, target_transform=None,
                 class_to_idx: Optional[Dict[str, int]] = None) -> None:
        super().__init__(root, transform=transform, target_transform=target_transform)
        base = Path(self.root)
        if class_to_idx is None:
            class_to_idx = {w: i for i, w in enumerate(_read_wnids(base))}
        self.class_to_idx = dict(class_to_idx)
        self.classes = sorted(self.class_to_idx, key=self.class_to_idx.__getitem__)
        ann = base / "val" / "val_annotations.txt"
        images = base / "val" / "images"
        missing = _missing([ann]) + ([] if images.is_dir() else [images])
        if missing:
            raise _not_found("Tiny-ImageNet val split", base / "val", missing, _TINY_HOW.format(parent=base.parent))
        samples, boxes = [], []
        for lineno, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in self.class_to_idx:
                raise ValueError(f"{ann}:{lineno}: expected 'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1' with a wnid "
                                 f"from wnids.txt, got {line!r}")
            samples.append((str(images / parts[0]), self.class_to_idx[parts[1]]))
            box = parts[2:6]
            boxes.append([int(v) for v in box] if len(box) == 4 else [-1, -1, -1, -1])
        self.samples = samples
        self.targets = [t for _, t in samples]
        self.boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        self.loader = tvd.folder.default_loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        img = self.loader(path)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


@register_dataset("tiny_imagenet", DatasetInfo(200, 3, 64, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821),
                                               "imagenet", test_split="val", splits=("train", "val"), crop_pct=1.0))
def _build_tiny_imagenet(root: Path, split: str, transform) -> Dataset:
    base = root if (root / "wnids.txt").is_file() else root / "tiny-imagenet-200"
    wnids = _read_wnids(base)
    if split == "val":
        return TinyImageNetVal(base, transform=transform, class_to_idx={w: i for i, w in enumerate(wnids)})
    train = base / "train"
    if not train.is_dir():
        raise _not_found("Tiny-ImageNet train split", base, [train], _TINY_HOW.format(parent=base.parent))
    ds = tvd.ImageFolder(str(train), transform=transform)
    if ds.classes != wnids:
        extra, absent = sorted(set(ds.classes) - set(wnids)), sorted(set(wnids) - set(ds.classes))
        raise ValueError(f"{train}: class folders must match wnids.txt; extra folders {extra[:5]}, "
                         f"missing folders {absent[:5]}")
    return ds
