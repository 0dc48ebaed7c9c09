"""The old flat module of the datasets, kept as an import path: every name it held now lives in
the module of its family (``base``, ``cifar``, ``mnist``, ``stl10``, ``tiny_imagenet``,
``folders``, ``subset``, ``safe_pickle``; see :mod:`samix.data.base`).

Names are forwarded, not copied: ``samix.data.datasets.FASHION_MNIST_SYSTEM_DIR = path`` sets
:data:`samix.data.mnist.FASHION_MNIST_SYSTEM_DIR`, which the Fashion-MNIST builder reads.
"""

from __future__ import annotations

from samix._facade import forward_names

from . import base, cifar, mnist, safe_pickle, stl10, subset, tiny_imagenet

forward_names(__name__, {
    **dict.fromkeys(["DatasetInfo", "IMAGENET_MEAN", "IMAGENET_STD", "_DATASETS", "build_dataset", "dataset_info",
                     "dataset_labels", "list_datasets", "register_dataset"], base),
    **dict.fromkeys(["CIFAR10", "CIFAR100"], cifar),
    "FASHION_MNIST_SYSTEM_DIR": mnist,
    "STL10": stl10,
    "TinyImageNetVal": tiny_imagenet,
    "safe_unpickle": safe_pickle,
    "stratified_subset": subset,
})
