"""The dataset registry and the helpers every dataset family shares: datasets from a local
``root`` folder, through torchvision's loaders, never downloading.

>>> from samix.data import build_dataset, dataset_info
>>> train = build_dataset("cifar100", "~/data", train=True)             # doctest: +SKIP
>>> info = dataset_info("cifar100")   # num_classes=100, in_chans=3, image_size=32, mean, std, ...

Every dataset returns ``(image, label)`` with ``image`` a PIL image (or whatever
``transform`` makes of it) and ``label`` a Python ``int`` in ``[0, num_classes)``
(STL-10's ``unlabeled`` split: ``-1``). Labels can be read without decoding an
image through :func:`dataset_labels` (``.targets`` / ``.labels``).

Each family is one module of :mod:`samix.data` that registers itself with
:func:`register_dataset`: ``cifar``, ``mnist``, ``stl10``, ``tiny_imagenet``, ``folders``
(class-balanced subsets: ``subset``; the CIFAR unpickler: ``safe_pickle``).

On-disk layouts (``ROOT`` is the ``root`` argument):

============== =====================================================================
name           files
============== =====================================================================
cifar10        ``ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
cifar100       ``ROOT/cifar-100-python/{train, test, meta}``
mnist          ``ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
fashion_mnist  ``ROOT/FashionMNIST/raw/`` (same four names)
stl10          ``ROOT/stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin``
tiny_imagenet  ``ROOT/tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG,
               val/images/*.JPEG, val/val_annotations.txt}``
image_folder   ``ROOT/<split>/<class>/<image>`` (``split`` = folder name; default
               ``train`` / ``val``); ``imagenet``, ``cub200``, ``aircraft``,
               ``inat2017``, ``inat2018``, ``places205`` are the same layout with a
               known class count (checked when loading)
============== =====================================================================

Choices made by the families (documented, tested):

* Only file *existence* is checked by default; ``verify=True`` (CIFAR, STL-10)
  also checks torchvision's MD5 sums, which re-reads every file (2.6 GB for
  STL-10's unlabeled split) on every construction.
* CIFAR pickles are read with a restricted unpickler that only rebuilds NumPy
  arrays, lists, dicts and strings: loading never executes code from a file.
* Tiny-ImageNet classes are ``sorted(wnids.txt)`` for both splits (the order
  ``ImageFolder`` gives the train split), so labels agree across splits.
* Fashion-MNIST: when ``ROOT/FashionMNIST/raw/`` lacks the extracted files but
  ``*.gz`` copies exist (in that folder, or in
  :data:`samix.data.mnist.FASHION_MNIST_SYSTEM_DIR`,
  where the Debian package ``dataset-fashion-mnist`` installs them), they are
  gunzipped into the raw folder atomically (temporary file + rename) and one
  log line says so. MNIST gets the same treatment for ``.gz`` files in its raw
  folder.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from samix._checks import check_bool
from samix._registry import Registry

__all__ = ["DATASETS", "IMAGENET_MEAN", "IMAGENET_STD", "DatasetInfo", "build_dataset", "dataset_info",
           "dataset_labels", "list_datasets", "register_dataset"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a transform need to know about a dataset.

    Attributes:
        num_classes: number of classes (``None`` for ``image_folder``: the number of class
            folders, ``len(dataset.classes)``).
        in_chans: image channels (1 for MNIST-like data, 3 otherwise).
        image_size: side of the (square) training image.
        mean, std: per-channel normalisation statistics, in [0, 1] units.
        default_preset: name of the transform preset (see :mod:`samix.data.transforms`).
        train_split, test_split: split names used when ``split`` is not given
            (``train=True`` / ``train=False``).
        splits: every valid split name; ``None`` for folder datasets (any folder name).
        crop_pct: test-time centre-crop fraction of the ``imagenet`` preset
            (``Resize(round(size / crop_pct))`` then ``CenterCrop(size)``).
    """

    num_classes: Optional[int]
    in_chans: int
    image_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    default_preset: str
    train_split: str = "train"
    test_split: str = "test"
    splits: Optional[Tuple[str, ...]] = ("train", "test")
    crop_pct: float = 0.875


class DatasetEntry(NamedTuple):
    """What :func:`register_dataset` stores: the dataset's info and its builder."""

    info: DatasetInfo
    builder: Callable[..., Dataset]


#: Registered datasets by name (:class:`DatasetEntry` values).
DATASETS: Registry[DatasetEntry] = Registry("dataset")
_DATASETS = DATASETS.entries


def register_dataset(name: str, info: DatasetInfo) -> Callable:
    """Register ``builder(root: Path, split: str, transform, **options) -> Dataset`` as ``name``."""

    def deco(builder):
        DATASETS.register(name, DatasetEntry(info, builder))
        return builder

    return deco


def list_datasets() -> list[str]:
    """Names of every registered dataset, sorted."""
    return DATASETS.list()


def _entry(name) -> DatasetEntry:
    return DATASETS.get(name)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of dataset ``name`` (``ValueError`` naming the known ones if unknown)."""
    return _entry(name)[0]


def build_dataset(name: str, root, train: bool = True, transform: Optional[Callable] = None,
                  split: Optional[str] = None, **options) -> Dataset:
    """Load dataset ``name`` from the local folder ``root`` (never downloads).

    Args:
        name: one of :func:`list_datasets`.
        root: folder holding the dataset's files (see the module docstring for each layout).
        train: pick the training split (``True``) or the evaluation split (``False``) when
            ``split`` is not given.
        transform: applied to each PIL image (e.g. :func:`~samix.data.build_transform`).
        split: an explicit split name; takes precedence over ``train``. Fixed-split datasets
            accept ``dataset_info(name).splits``; folder datasets accept any sub-folder name.
        **options: dataset-specific options: ``verify`` (cifar10, cifar100, stl10: check MD5
            sums), ``folds`` (stl10: one of torchvision's ten 1k-image training folds).

    Returns:
        a map-style ``Dataset`` of ``(image, int label)``.

    Raises:
        ValueError: unknown ``name``/``split``, or files in a wrong format.
        TypeError: an argument of the wrong type or an option the dataset does not take.
        FileNotFoundError: the files are missing; the message names the exact paths and
            how to get the files.
    """
    info, builder = _entry(name)
    check_bool("train", train)
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a str or os.PathLike folder path, got {type(root).__name__}")
    root = Path(root).expanduser()
    if split is None:
        split = info.train_split if train else info.test_split
    elif not isinstance(split, str) or not split:
        raise TypeError(f"split must be a non-empty str or None, got {split!r}")
    if info.splits is not None and split not in info.splits:
        raise ValueError(f"unknown split {split!r} for dataset {name!r}; valid splits: {', '.join(info.splits)}")
    accepted = [p for p in inspect.signature(builder).parameters if p not in ("root", "split", "transform")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"dataset {name!r} takes no option(s) {unknown}; its options: {accepted or 'none'}")
    return builder(root, split, transform, **options)



# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _resolve_base(root: Path, base_folder: str) -> Path:
    """``root/base_folder``; also accepts ``root`` pointing at ``base_folder`` itself."""
    if not (root / base_folder).exists() and root.name == base_folder:
        return root
    return root / base_folder


def _missing(paths: Sequence[Path]) -> list[Path]:
    return [p for p in paths if not p.is_file()]


def _not_found(what: str, looked: Path, missing: Sequence[Path], how: str) -> FileNotFoundError:
    listed = ", ".join(str(p) for p in missing[:8]) + (f" (and {len(missing) - 8} more)" if len(missing) > 8 else "")
    return FileNotFoundError(f"{what} not found: looked in {looked}; missing: {listed}. {how}")


def dataset_labels(dataset) -> np.ndarray:
    """Integer labels of ``dataset`` as int64 ``[len(dataset)]``, without decoding images
    where the dataset exposes them (``.targets``, ``.labels``; ``Subset`` and
    ``ConcatDataset`` are followed). Falls back to ``dataset[i][1]`` for each ``i``."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, ConcatDataset):
        return np.concatenate([dataset_labels(d) for d in dataset.datasets]).astype(np.int64)
    labels = None
    for attr in ("targets", "labels"):
        value = getattr(dataset, attr, None)
        if value is not None:
            labels = value
            break
    if labels is None:
        labels = [dataset[i][1] for i in range(len(dataset))]
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise TypeError(f"dataset labels must be a 1-D sequence of ints, got dtype {labels.dtype} "
                        f"and shape {labels.shape}")
    labels = labels.astype(np.int64)
    if len(labels) != len(dataset):
        raise ValueError(f"dataset has {len(dataset)} samples but {len(labels)} labels")
    return labels
