"""MNIST / Fashion-MNIST: torchvision's classes over the original idx-ubyte files.

Layout: ``ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` and
``ROOT/FashionMNIST/raw/`` (same four names). When the raw folder lacks the extracted files
but ``*.gz`` copies exist (in that folder, or, for Fashion-MNIST, in
:data:`FASHION_MNIST_SYSTEM_DIR`, where the Debian package ``dataset-fashion-mnist`` installs
them), they are gunzipped into the raw folder atomically (temporary file + rename) and one log
line says so.
"""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path
from typing import Optional

from torch.utils.data import Dataset
from torchvision import datasets as tvd

from samix._io import atomic_write

from .base import DatasetInfo, _missing, _not_found, register_dataset

__all__ = ["FASHION_MNIST_SYSTEM_DIR"]

#: The dataset log channel keeps the name it had before the split (filters and tests select it).
logger = logging.getLogger("samix.data.datasets")

#: Where the Debian package ``dataset-fashion-mnist`` installs the original ``*-ubyte.gz``
#: files (``dpkg -L dataset-fashion-mnist`` lists them). Read at every build, so setting it
#: (here or, as before the split, on ``samix.data.datasets``) takes effect; tests point it elsewhere.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _gunzip_atomic(src: Path, dst: Path) -> None:
    """Decompress ``src`` into ``dst`` through a temporary file in ``dst``'s folder and a rename
    (:func:`samix._io.atomic_write`), so that a concurrent reader (another DDP rank) never sees a
    half-written file."""
    try:
        with gzip.open(src, "rb") as fin:
            atomic_write(dst, lambda fout: shutil.copyfileobj(fin, fout, length=1 << 20))
    except (OSError, EOFError) as e:
        raise OSError(f"could not extract {src} into {dst}: {e}") from e


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
