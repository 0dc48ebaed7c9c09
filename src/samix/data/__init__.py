"""Datasets (torchvision loaders, local files only), transform presets, two-view wrapper.

>>> from samix.data import build_dataset, build_transform, dataset_info, stratified_subset
>>> info = dataset_info("fashion_mnist")
>>> train = build_dataset("fashion_mnist", "~/data", train=True,
...                       transform=build_transform(info.default_preset, True, info))  # doctest: +SKIP
>>> small = stratified_subset(train, n_total=2000, seed=0)                           # doctest: +SKIP

The folder the Debian Fashion-MNIST files are taken from is
``samix.data.mnist.FASHION_MNIST_SYSTEM_DIR`` (set it there, or, as before,
``samix.data.datasets.FASHION_MNIST_SYSTEM_DIR``, which forwards to it).

One module per concept: ``base`` (:class:`DatasetInfo`, the dataset registry,
:func:`build_dataset`, :func:`dataset_labels`), one module per dataset family (``cifar``,
``mnist``, ``stl10``, ``tiny_imagenet``, ``folders``), ``subset``
(:func:`stratified_subset`), ``safe_pickle``, ``transforms`` (presets), ``twoview``.
Every module is imported here, so a new family is one file that calls
:func:`register_dataset`.
"""

from .augmix import AugMixDataset
from .base import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, build_dataset, dataset_info, dataset_labels, \
    list_datasets, register_dataset
from .cifar import CIFAR10, CIFAR100
from .safe_pickle import safe_unpickle
from .stl10 import STL10
from .subset import stratified_subset
from .tiny_imagenet import TinyImageNetVal
from .transforms import build_transform, list_presets, moco_blur_kernel, register_preset
from .twoview import TwoViewDataset

from .._discover import import_submodules as _import_submodules

_import_submodules(__name__, __path__)

__all__ = [
    "AugMixDataset", "CIFAR10", "CIFAR100", "DatasetInfo", "IMAGENET_MEAN", "IMAGENET_STD", "STL10",
    "TinyImageNetVal", "TwoViewDataset", "build_dataset", "build_transform", "dataset_info", "dataset_labels",
    "list_datasets", "list_presets", "moco_blur_kernel", "register_dataset", "register_preset", "safe_unpickle",
    "stratified_subset",
]
