"""``ImageFolder`` layouts ``ROOT/<split>/<class>/<image>``: ``image_folder`` (any class count)
and ``imagenet``, ``cub200``, ``aircraft``, ``inat2017``, ``inat2018``, ``places205`` (the same
layout with a known class count, checked when loading)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from torch.utils.data import Dataset
from torchvision import datasets as tvd

from .base import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, register_dataset

def _folder_builder(label: str, num_classes: Optional[int]):
    def build(root: Path, split: str, transform) -> Dataset:
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{label} split {split!r} not found: looked for the folder {folder} "
                f"(expected layout {root}/<split>/<class>/<image>, e.g. {root}/train and {root}/val; "
                f"pass split=... for other folder names)")
        ds = tvd.ImageFolder(str(folder), transform=transform)
        if num_classes is not None and len(ds.classes) != num_classes:
            raise ValueError(f"{folder}: {label} has {num_classes} classes, found {len(ds.classes)} class folders")
        return ds

    return build


_FOLDER_INFO = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, default_preset="imagenet", test_split="val", splits=None)
register_dataset("image_folder", DatasetInfo(None, 3, 224, **_FOLDER_INFO))(_folder_builder("image folder", None))
for _name, _label, _k in (("imagenet", "ImageNet-1k", 1000), ("cub200", "CUB-200-2011", 200),
                          ("aircraft", "FGVC-Aircraft", 100), ("inat2017", "iNaturalist 2017", 5089),
                          ("inat2018", "iNaturalist 2018", 8142), ("places205", "Places205", 205)):
    register_dataset(_name, DatasetInfo(_k, 3, 224, **_FOLDER_INFO))(_folder_builder(_label, _k))
