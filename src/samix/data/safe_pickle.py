"""A restricted unpickler for the CIFAR python format: it rebuilds NumPy arrays, lists, dicts
and strings, and refuses every other global, so loading never executes code from a file."""

from __future__ import annotations

import codecs
import pickle
from typing import Any

import numpy as np

__all__ = ["safe_unpickle"]

_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_NP_SCALAR = np.int64(0).__reduce__()[0]
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
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
