"""Helpers for engine tests: a tiny Fashion-MNIST in its real on-disk format (idx ubyte files)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file (the MNIST/Fashion-MNIST format): magic, dims (big-endian int32), uint8 data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim  # 0x08 = unsigned byte
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for d in array.shape:
            f.write(struct.pack(">I", d))
        f.write(array.tobytes())


def make_fashion_mnist(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """A learnable toy Fashion-MNIST: each class is a bright bar at a class-specific row, plus noise."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, 28, 28))
        rows = 2 + labels * 2
        images[np.arange(n), rows, :] = 255
        images[np.arange(n), rows + 1, :] = 200
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return Path(root)


def train_killed_in_epoch(monkeypatch, trainer, cfg, epoch: int) -> None:
    """Run ``trainer.train(cfg)`` and simulate a kill at the second iteration of ``epoch`` (1-based), after the
    checkpoint of the epoch before; the progress hook is restored afterwards."""
    import pytest

    orig = trainer.Progress.update

    def crash(self, i, loss_fn):
        if self.desc.startswith(f"epoch {epoch}/") and i == 1:
            raise KeyboardInterrupt("simulated kill")
        return orig(self, i, loss_fn)

    monkeypatch.setattr(trainer.Progress, "update", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg)
    monkeypatch.setattr(trainer.Progress, "update", orig)
