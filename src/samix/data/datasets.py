"""Datasets from a local ``root`` folder, through torchvision's loaders, never downloading.

>>> from samix.data import build_dataset, dataset_info
>>> train = build_dataset("cifar100", "~/data", train=True)             # doctest: +SKIP
>>> info = dataset_info("cifar100")   # num_classes=100, in_chans=3, image_size=32, mean, std, ...

Every dataset returns ``(image, label)`` with ``image`` a PIL image (or whatever
``transform`` makes of it) and ``label`` a Python ``int`` in ``[0, num_classes)``
(STL-10's ``unlabeled`` split: ``-1``). Labels can be read without decoding an
image through :func:`dataset_labels` (``.targets`` / ``.labels``).

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

Choices made here (documented, tested):

* Only file *existence* is checked by default; ``verify=True`` (CIFAR, STL-10)
  also checks torchvision's MD5 sums, which re-reads every file (2.6 GB for
  STL-10's unlabeled split) on every construction.
* CIFAR pickles are read with a restricted unpickler that only rebuilds NumPy
  arrays, lists, dicts and strings: loading never executes code from a file.
* Tiny-ImageNet classes are ``sorted(wnids.txt)`` for both splits (the order
  ``ImageFolder`` gives the train split), so labels agree across splits.
* Fashion-MNIST: when ``ROOT/FashionMNIST/raw/`` lacks the extracted files but
  ``*.gz`` copies exist (in that folder, or in :data:`FASHION_MNIST_SYSTEM_DIR`,
  where the Debian package ``dataset-fashion-mnist`` installs them), they are
  gunzipped into the raw folder atomically (temporary file + rename) and one
  log line says so. MNIST gets the same treatment for ``.gz`` files in its raw
  folder.
"""

from __future__ import annotations

import gzip
import inspect
import logging
import os
import pickle
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision import datasets as tvd
from torchvision.datasets.utils import check_integrity

logger = logging.getLogger(__name__)

#: Where the Debian package ``dataset-fashion-mnist`` installs the original ``*-ubyte.gz``
#: files (``dpkg -L dataset-fashion-mnist`` lists them). Tests point it elsewhere.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

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


_DATASETS: Dict[str, Tuple[DatasetInfo, Callable[..., Dataset]]] = {}


def register_dataset(name: str, info: DatasetInfo) -> Callable:
    """Register ``builder(root: Path, split: str, transform, **options) -> Dataset`` as ``name``."""

    def deco(builder):
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        _DATASETS[name] = (info, builder)
        return builder

    return deco


def list_datasets() -> list[str]:
    """Names of every registered dataset, sorted."""
    return sorted(_DATASETS)


def _entry(name) -> Tuple[DatasetInfo, Callable[..., Dataset]]:
    if not isinstance(name, str) or name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}")
    return _DATASETS[name]


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
    if not isinstance(train, bool):
        raise TypeError(f"train must be a bool, got {type(train).__name__} ({train!r})")
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


# ---------------------------------------------------------------------------------------------
# CIFAR (torchvision's classes, pickles read by a restricted unpickler)
# ---------------------------------------------------------------------------------------------
_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_NP_SCALAR = np.int64(0).__reduce__()[0]
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("codecs").encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds NumPy arrays and plain containers, and refuses anything else."""

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only NumPy arrays and plain Python data are allowed"
            ) from None


def safe_unpickle(path) -> Any:
    """Load a pickle that holds only NumPy arrays and plain data (the CIFAR python format)."""
    with open(path, "rb") as f:
        try:
            return _ArrayUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise ValueError(f"{path} is not a valid CIFAR python pickle: {e}") from e


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


# ---------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (torchvision's classes; optional gunzip of the original files)
# ---------------------------------------------------------------------------------------------
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _gunzip_atomic(src: Path, dst: Path) -> None:
    """Decompress ``src`` into ``dst`` through a temporary file in ``dst``'s folder and a rename,
    so that a concurrent reader (another DDP rank) never sees a half-written file."""
    # open(..., "xb") rather than mkstemp: the file gets the usual umask permissions, not 0600.
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout, length=1 << 20)
        os.replace(tmp, dst)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, (OSError, EOFError)):
            raise OSError(f"could not extract {src} into {dst}: {e}") from e
        raise


def _extract_idx(raw: Path, system_dir: Optional[Path]) -> Optional[str]:
    """Gunzip missing idx files into ``raw`` from ``raw/*.gz`` or ``system_dir/*.gz``.

    Only runs when every missing file has a source; returns a description of what was done."""
    todo = []
    for name in _IDX_FILES:
        if (raw / name).is_file():
            continue
        sources = [raw / f"{name}.gz"] + ([system_dir / f"{name}.gz"] if system_dir is not None else [])
        src = next((s for s in sources if s.is_file()), None)
        if src is None:
            return None
        todo.append((src, raw / name))
    if not todo:
        return None
    raw.mkdir(parents=True, exist_ok=True)
    for src, dst in todo:
        _gunzip_atomic(src, dst)
    folders = sorted({str(src.parent) for src, _ in todo})
    return f"extracted {len(todo)} file(s) from {', '.join(folders)} into {raw}"


def _mnist_builder(cls, system_dir_attr: Optional[str], how: str):
    def build(root: Path, split: str, transform) -> Dataset:
        if root.name == cls.__name__ and not (root / cls.__name__).exists():
            root = root.parent
        raw = root / cls.__name__ / "raw"
        system_dir = globals()[system_dir_attr] if system_dir_attr else None
        if _missing([raw / n for n in _IDX_FILES]):
            done = _extract_idx(raw, Path(system_dir) if system_dir is not None else None)
            if done:
                logger.info("%s: %s", cls.__name__, done)
        missing = _missing([raw / n for n in _IDX_FILES])
        if missing:
            raise _not_found(cls.__name__, raw, missing, how.format(raw=raw, root=root))
        try:
            ds = cls(root, train=(split == "train"), transform=transform, download=False)
        except (AssertionError, RuntimeError, ValueError) as e:
            raise ValueError(f"{raw}: not valid idx-ubyte files ({type(e).__name__}: {e})") from e
        if ds.data.dim() != 3 or len(ds.data) != len(ds.targets):
            raise ValueError(f"{raw}: the {split} images (shape {tuple(ds.data.shape)}) and labels "
                             f"({len(ds.targets)}) do not match")
        return ds

    return build


register_dataset("mnist", DatasetInfo(10, 1, 28, (0.1307,), (0.3081,), "grayscale"))(_mnist_builder(
    tvd.MNIST, None,
    "Put the four original files (train/t10k images-idx3 and labels-idx1, '-ubyte' or '-ubyte.gz') into "
    "{raw}, or, when online, run torchvision.datasets.MNIST('{root}', download=True) once."))
register_dataset("fashion_mnist", DatasetInfo(10, 1, 28, (0.2860,), (0.3530,), "grayscale"))(_mnist_builder(
    tvd.FashionMNIST, "FASHION_MNIST_SYSTEM_DIR",
    "Install the Debian package dataset-fashion-mnist (it puts the original *-ubyte.gz files under "
    "/usr/share/datasets/fashion-mnist/, `dpkg -L dataset-fashion-mnist` lists them; samix then extracts "
    "them automatically), or copy the four '-ubyte' / '-ubyte.gz' files into {raw}, or, when online, run "
    "torchvision.datasets.FashionMNIST('{root}', download=True) once."))


# ---------------------------------------------------------------------------------------------
# STL-10 (torchvision's class; cheap existence check unless verify=True)
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Tiny-ImageNet (ImageFolder for train, a small class for val)
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# ImageFolder layouts (CUB-200, FGVC-Aircraft, ImageNet, iNat, Places in folder form)
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# stratified subsets
# ---------------------------------------------------------------------------------------------
def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


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
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    labels = dataset_labels(dataset)
    if labels.size == 0:
        raise ValueError("stratified_subset needs a non-empty dataset")
    if labels.min() < 0:
        raise ValueError(f"stratified_subset needs labels >= 0, got {labels.min()} (unlabeled samples?)")
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(int(seed))
    quota = np.empty(len(classes), dtype=np.int64)
    if per_class is not None:
        quota[:] = _check_count("per_class", per_class)
    else:
        n_total = _check_count("n_total", n_total)
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
