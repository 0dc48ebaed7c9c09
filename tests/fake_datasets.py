"""Write tiny datasets in the REAL on-disk formats, for loader tests.

Each writer returns what it wrote (arrays as HWC uint8, labels as int arrays) so tests
can check that pixels and labels survive the round trip through the real loaders.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def _rng(seed):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- CIFAR
def write_cifar(root, kind: str = "cifar10", n_per_file: int = 4, seed: int = 0, protocol: int = 2) -> dict:
    """CIFAR python version: pickled dicts with ``data`` uint8 [N, 3072] (channel-major,
    row-major), ``labels`` (CIFAR-10) or ``fine_labels``/``coarse_labels`` (CIFAR-100),
    plus ``batches.meta`` / ``meta``. Returns {"train": (images HWC, labels), "test": ...}."""
    rng = _rng(seed)
    if kind == "cifar10":
        base = Path(root) / "cifar-10-batches-py"
        train_files, test_files, k = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], 10
        meta_name, meta = "batches.meta", {"label_names": [f"class{i}" for i in range(10)],
                                           "num_cases_per_batch": n_per_file, "num_vis": 3072}
        label_key = "labels"
    elif kind == "cifar100":
        base = Path(root) / "cifar-100-python"
        train_files, test_files, k = ["train"], ["test"], 100
        meta_name, meta = "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                                   "coarse_label_names": [f"coarse{i}" for i in range(20)]}
        label_key = "fine_labels"
    else:
        raise ValueError(kind)
    base.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, files in (("train", train_files), ("test", test_files)):
        imgs, labs = [], []
        for name in files:
            hwc = rng.integers(0, 256, size=(n_per_file, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, k, size=n_per_file)
            entry = {"batch_label": name, "data": hwc.transpose(0, 3, 1, 2).reshape(n_per_file, -1),
                     label_key: [int(v) for v in labels], "filenames": [f"img{i}.png" for i in range(n_per_file)]}
            if kind == "cifar100":
                entry["coarse_labels"] = [int(v) // 5 for v in labels]
            with open(base / name, "wb") as f:
                pickle.dump(entry, f, protocol=protocol)
            imgs.append(hwc)
            labs.append(labels)
        out[split] = (np.concatenate(imgs), np.concatenate(labs))
    with open(base / meta_name, "wb") as f:
        pickle.dump(meta, f, protocol=protocol)
    return out


# --------------------------------------------------------------------------- MNIST idx
def idx_bytes(array: np.ndarray) -> bytes:
    """IDX format: magic (0, 0, 0x08 = ubyte, ndim), big-endian int32 dims, raw uint8 data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def write_idx(folder, n_train: int = 12, n_test: int = 6, gz: bool = False, seed: int = 0) -> dict:
    """The four MNIST-style files (``-ubyte`` or ``-ubyte.gz``) in ``folder``.
    Returns {"train": (images [N, 28, 28], labels), "test": ...}."""
    rng = _rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = folder / f"{prefix}-{kind}-ubyte"
            data = idx_bytes(arr)
            if gz:
                with gzip.open(str(name) + ".gz", "wb") as f:
                    f.write(data)
            else:
                name.write_bytes(data)
        out[split] = (images, labels.astype(np.int64))
    return out


# --------------------------------------------------------------------------- STL-10
def stl_bytes(hwc: np.ndarray) -> bytes:
    """STL-10 binary: each image 3 x 96 x 96 uint8, channel by channel, each channel column-major."""
    return np.ascontiguousarray(hwc.transpose(0, 3, 2, 1)).tobytes()


def write_stl10(root, n_train: int = 6, n_test: int = 4, n_unlabeled: int = 3, seed: int = 0) -> dict:
    """``stl10_binary/`` with train/test X/y and unlabeled X; labels on disk are 1..10.
    Returns {"train": (images HWC, 0-based labels), "test": ..., "unlabeled": (images, None)}."""
    rng = _rng(seed)
    base = Path(root) / "stl10_binary"
    base.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        hwc = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
        (base / f"{split}_X.bin").write_bytes(stl_bytes(hwc))
        labels = None
        if split != "unlabeled":
            labels = rng.integers(0, 10, size=n)
            (base / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        out[split] = (hwc, labels)
    (base / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    return out


# --------------------------------------------------------------------------- Tiny-ImageNet
def _colour(rng):
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def write_tiny_imagenet(root, wnids=("n02", "n01", "n03"), n_train: int = 2, n_val: int = 4,
                        size: int = 8, seed: int = 0) -> dict:
    """``tiny-imagenet-200/`` with wnids.txt (unsorted on purpose), train/<wnid>/images/*.JPEG,
    train/<wnid>/<wnid>_boxes.txt, val/images/*.JPEG and val/val_annotations.txt; every image
    has one constant colour (JPEG keeps that nearly exact).
    Returns {"train": [(wnid, file, colour)], "val": [(file, wnid, colour, box)]}."""
    rng = _rng(seed)
    base = Path(root) / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    (base / "test" / "images").mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("\n".join(f"{w}\tthing {w}" for w in wnids) + "\n")
    out = {"train": [], "val": []}
    for w in wnids:
        folder = base / "train" / w / "images"
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(n_train):
            c = _colour(rng)
            Image.new("RGB", (size, size), c).save(folder / f"{w}_{i}.JPEG", format="JPEG", quality=95)
            lines.append(f"{w}_{i}.JPEG\t0\t0\t{size - 1}\t{size - 1}")
            out["train"].append((w, f"{w}_{i}.JPEG", c))
        (base / "train" / w / f"{w}_boxes.txt").write_text("\n".join(lines) + "\n")
    ann = []
    for i in range(n_val):
        w = wnids[i % len(wnids)]
        c = _colour(rng)
        Image.new("RGB", (size, size), c).save(base / "val" / "images" / f"val_{i}.JPEG", format="JPEG", quality=95)
        box = (i % 3, 1, size - 2, size - 1)
        ann.append(f"val_{i}.JPEG\t{w}\t" + "\t".join(map(str, box)))
        out["val"].append((f"val_{i}.JPEG", w, c, box))
    (base / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return out


# --------------------------------------------------------------------------- ImageFolder
def write_image_folder(root, classes=("b_cls", "a_cls"), n_per_class: int = 2, splits=("train", "val"),
                       size: int = 6, seed: int = 0) -> dict:
    """``root/<split>/<class>/<i>.png`` random RGB PNGs (lossless).
    Returns {split: [(class, HWC uint8 array)]}."""
    rng = _rng(seed)
    out = {}
    for split in splits:
        out[split] = []
        for c in classes:
            folder = Path(root) / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.png")
                out[split].append((c, arr))
    return out
