"""Datasets (torchvision loaders, local files only), transform presets, two-view wrapper.

>>> from samix.data import build_dataset, build_transform, dataset_info, stratified_subset
>>> info = dataset_info("fashion_mnist")
>>> train = build_dataset("fashion_mnist", "~/data", train=True,
...                       transform=build_transform(info.default_preset, True, info))  # doctest: +SKIP
>>> small = stratified_subset(train, n_total=2000, seed=0)                           # doctest: +SKIP

The folder the Debian Fashion-MNIST files are taken from is
``samix.data.datasets.FASHION_MNIST_SYSTEM_DIR`` (set it there to change it).
"""

from .datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CIFAR10,
    CIFAR100,
    STL10,
    DatasetInfo,
    TinyImageNetVal,
    build_dataset,
    dataset_info,
    dataset_labels,
    list_datasets,
    register_dataset,
    safe_unpickle,
    stratified_subset,
)
from .transforms import build_transform, list_presets, moco_blur_kernel, register_preset
from .twoview import TwoViewDataset

__all__ = [
    "CIFAR10", "CIFAR100", "DatasetInfo", "IMAGENET_MEAN", "IMAGENET_STD", "STL10",
    "TinyImageNetVal", "TwoViewDataset", "build_dataset", "build_transform", "dataset_info", "dataset_labels",
    "list_datasets", "list_presets", "moco_blur_kernel", "register_dataset", "register_preset", "safe_unpickle",
    "stratified_subset",
]
