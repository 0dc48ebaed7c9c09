"""Atomic writes and exact-resume checkpoints.

A checkpoint holds only plain tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(..., weights_only=True)`` (no code runs on load).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from samix import _io


def _atomic_write(path: Path, write) -> None:
    """``write(f)`` into ``path`` atomically (see :func:`samix._io.atomic_write`)."""
    _io.atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    _io.atomic_write_text(path, text)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then rename: never a half-written file."""
    _io.atomic_write(path, lambda f: torch.save(obj, f))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (damaged, or not a samix checkpoint)."""


def _older(path: Path) -> str:
    prev = path.with_name("prev.pt")
    if prev != path and prev.is_file():
        return f"; the previous checkpoint {prev} is intact (copy it over {path.name} to resume from it)"
    return "; there is no older checkpoint to fall back to"


def load_checkpoint(path: Path, map_location="cpu") -> Dict[str, Any]:
    """Load a samix checkpoint with ``weights_only=True``. A file that is damaged (truncated, empty) or holds
    Python objects samix never writes (a refused pickle payload) raises :class:`CheckpointError` saying so and
    naming an older checkpoint when one exists; nothing in the file is executed."""
    import pickle
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is damaged: the file is empty{_older(path)}")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} is not a samix checkpoint: it holds Python objects that samix checkpoints "
                              f"never contain, so it was refused unread{_older(path)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged (truncated or corrupt: {str(e).splitlines()[0]})"
                              f"{_older(path)}") from None
    if not isinstance(ck, dict):
        raise CheckpointError(f"{path} is not a samix checkpoint (a {type(ck).__name__}, not a mapping){_older(path)}")
    return ck


TRAINING_KEYS = ("algorithm", "optimizer", "scaler", "epoch", "rng")


def load_training_checkpoint(path: Path, map_location="cpu", keys=("algorithm",)) -> Dict[str, Any]:
    """:func:`load_checkpoint` of a checkpoint written by ``samix train`` (a sentence naming the file when
    it lacks ``keys``, e.g. a bare state dict)."""
    ck = load_checkpoint(path, map_location=map_location)
    missing = sorted(set(keys) - set(ck))
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint written by samix train (it has no {missing}); give "
                              f"RUN/checkpoints/last.pt or prev.pt")
    return ck


def recover_interrupted_save(path: Path) -> bool:
    """After a kill between the two renames of :func:`save_checkpoint`, ``path`` is missing while its complete
    successor ``.NAME.next.tmp`` is still there: put it in place (if it loads) and return True."""
    path = Path(path)
    nxt = path.with_name(f".{path.name}.next.tmp")
    if path.exists() or not nxt.is_file():
        return False
    try:
        load_checkpoint(nxt)
    except (CheckpointError, FileNotFoundError):
        return False
    os.replace(nxt, path)
    return True


def save_checkpoint(ck: Dict[str, Any], path: Path) -> None:
    """Write ``ck`` atomically to ``path``, keeping the checkpoint it replaces as ``prev.pt`` beside it.

    The new file is complete (temp file, fsync) before anything moves, so a kill or a full disk during the
    write leaves ``path`` as it was; a kill between the two renames leaves ``prev.pt`` only, which
    :func:`resume_path` picks up."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.next.tmp")
    _io.atomic_write(tmp, lambda f: torch.save(ck, f))
    if path.exists():
        os.replace(path, path.with_name("prev.pt"))
    os.replace(tmp, path)


def resume_path(path: Path) -> Path:
    """``path`` if it exists, else ``prev.pt`` beside it when a kill fell between the renames of
    :func:`save_checkpoint`."""
    path = Path(path)
    prev = path.with_name("prev.pt")
    return prev if not path.exists() and prev.is_file() else path


def rng_state(generators: Dict[str, torch.Generator] | None = None) -> Dict[str, Any]:
    """Every RNG a run draws from, as plain tensors and lists."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _py_state_to_plain(random.getstate()),
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any], generators: Dict[str, torch.Generator] | None = None) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(_py_state_from_plain(state["python"]))
    for k, g in (generators or {}).items():
        if k in state.get("generators", {}):
            g.set_state(state["generators"][k].cpu() if g.device.type == "cpu" else state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _py_state_to_plain(st):
    version, internal, gauss = st
    return [int(version), list(internal), gauss]


def _py_state_from_plain(st):
    version, internal, gauss = st
    return (int(version), tuple(int(v) for v in internal), gauss)
