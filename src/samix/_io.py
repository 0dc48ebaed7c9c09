"""Atomic file writes: a reader (another process, another DDP rank, a resumed run) sees either
the old file or the complete new one, never a half-written file.

The data goes to a temporary file in the destination's folder (same file system, so the final
``os.replace`` is atomic), is flushed and fsync'ed, gets the permissions ``open(path, "w")`` would
give (``0o666`` minus the umask; ``mkstemp`` alone makes ``0o600``), and then replaces ``path``.
On any error, including ``KeyboardInterrupt``, the temporary file is removed and an existing
``path`` is left as it was. Parent folders are created.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``);
    elsewhere set and restored at once (``os.umask`` is the only portable reader)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _default_mode() -> int:
    """``0o666 & ~umask``: the mode a plain ``open(path, "w")`` creates files with."""
    return 0o666 & ~_umask()


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` with a binary file object, then atomically put what it wrote at ``path``.

    Returns ``path`` as a :class:`~pathlib.Path`. If ``write`` raises, the exception propagates,
    no temporary file is left behind and ``path`` keeps its previous content (or stays absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` (encoded as ``encoding``) to ``path`` (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text.encode(encoding)))
