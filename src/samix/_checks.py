"""Argument checks shared by every module of samix, with one message format::

    <what> <name> must be <expected>, got <value!r>

``what`` is an optional prefix given by the caller (``"algorithm option"``, ``"mixer option"``),
``name`` the argument's name as the user wrote it. A value of the wrong *type* raises
``TypeError`` (``type_error=ValueError`` where an API has always raised ``ValueError``), a value
of the right type outside its range ``ValueError``. ``bool`` is never accepted as a number.

>>> check_number("alpha", 0.5, low=0.0, low_open=True)
0.5
>>> check_number("prob", 1.5, low=0.0, high=1.0)
Traceback (most recent call last):
ValueError: prob must be <= 1.0, got 1.5
>>> check_int("n_bins", 0, low=1)
Traceback (most recent call last):
ValueError: n_bins must be a positive int, got 0
>>> check_choice("mode", "pixel", ("batch", "elem"), what="mixer option")
Traceback (most recent call last):
ValueError: mixer option mode must be one of ['batch', 'elem'], got 'pixel'
>>> check_bool("flip", 1)
Traceback (most recent call last):
TypeError: flip must be a bool, got 1
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Type

import numpy as np
import torch

__all__ = ["argument_error", "check_bool", "check_choice", "check_class_indices", "check_int", "check_number",
           "check_probability", "is_int", "is_number"]


def argument_error(name: str, expected: str, value: Any, *, what: str = "",
                   error: Type[Exception] = ValueError) -> Exception:
    """The exception ``error("<what> <name> must be <expected>, got <value!r>")`` (to raise)."""
    prefix = f"{what} " if what else ""
    return error(f"{prefix}{name} must be {expected}, got {value!r}")


def is_number(value: Any) -> bool:
    """A real number (Python or NumPy int/float), not a ``bool``."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def is_int(value: Any) -> bool:
    """A Python or NumPy integer, not a ``bool``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_number(name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None, *,
                 low_open: bool = False, high_open: bool = False, what: str = "",
                 type_error: Type[Exception] = TypeError) -> float:
    """``value`` as a finite ``float`` within the bounds; returns it.

    ``low``/``high``: inclusive bounds (``None``: unbounded); ``low_open``/``high_open`` make them
    exclusive. Messages: ``"must be a number"`` (``type_error``), ``"must be finite"``,
    ``"must be > 0.0"`` / ``">="`` / ``"<"`` / ``"<="`` (``ValueError``).
    """
    if not is_number(value):
        raise argument_error(name, "a number", value, what=what, error=type_error)
    number = float(value)
    if not math.isfinite(number):
        raise argument_error(name, "finite", value, what=what)
    if low is not None and (number <= low if low_open else number < low):
        raise argument_error(name, f"{'>' if low_open else '>='} {low}", value, what=what)
    if high is not None and (number >= high if high_open else number > high):
        raise argument_error(name, f"{'<' if high_open else '<='} {high}", value, what=what)
    return number


def check_probability(name: str, value: Any, *, what: str = "", type_error: Type[Exception] = TypeError) -> float:
    """A number in ``[0, 1]`` (a probability, a share such as ``lam``, a smoothing ``eps``)."""
    return check_number(name, value, low=0.0, high=1.0, what=what, type_error=type_error)


def _int_expected(low: Optional[int], high: Optional[int], none_ok: bool) -> str:
    if low is not None and high is not None:
        text = f"an int in [{low}, {high}]"
    elif low == 1:
        text = "a positive int"
    elif low == 0:
        text = "a non-negative int"
    elif low is not None:
        text = f"an int >= {low}"
    elif high is not None:
        text = f"an int <= {high}"
    else:
        text = "an int"
    return text + (" or None" if none_ok else "")


def check_int(name: str, value: Any, low: Optional[int] = None, high: Optional[int] = None, *,
              none_ok: bool = False, what: str = "", type_error: Type[Exception] = TypeError) -> Optional[int]:
    """``value`` as an ``int`` in ``[low, high]`` (inclusive; ``None``: unbounded); returns it.

    A non-int (``bool`` included) gets ``"must be an int"`` (``type_error``); an int out of range
    gets the whole expectation (``"a positive int"`` for ``low=1``, ``"a non-negative int"`` for
    ``low=0``, ``"an int in [0, 4]"``, ...), ``ValueError``. ``none_ok=True`` accepts ``None``
    (returned as is) and adds ``" or None"`` to the messages.
    """
    if value is None and none_ok:
        return None
    if not is_int(value):
        raise argument_error(name, "an int or None" if none_ok else "an int", value, what=what, error=type_error)
    if (low is not None and value < low) or (high is not None and value > high):
        raise argument_error(name, _int_expected(low, high, none_ok), value, what=what)
    return int(value)


def check_choice(name: str, value: Any, choices: Sequence[Any], *, what: str = "") -> Any:
    """``value`` if it is one of ``choices`` (``ValueError`` listing them otherwise)."""
    try:
        ok = value in choices
    except TypeError:  # e.g. an unhashable value against a set/dict of choices
        ok = False
    if not ok:
        raise argument_error(name, f"one of {list(choices)}", value, what=what)
    return value


def check_bool(name: str, value: Any, *, what: str = "") -> bool:
    """``value`` if it is a ``bool`` (``TypeError`` otherwise: ``1`` and ``"yes"`` are not)."""
    if not isinstance(value, bool):
        raise argument_error(name, "a bool", value, what=what, error=TypeError)
    return value


def check_class_indices(labels: Any, num_rows: int, num_classes: int, *, rows_of: str = "logits",
                        name: str = "labels") -> "torch.Tensor":
    """Integer class indices ``[num_rows]`` in ``[0, num_classes)``, one per row of ``rows_of``.

    Reads the values (a host synchronisation on an accelerator): for evaluation, not for a
    training step. ``TypeError`` for a non-tensor or a non-integer dtype, ``ValueError`` for a
    wrong shape or a value out of range; returns ``labels``.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != num_rows:
        raise ValueError(f"{name} must have shape [{num_rows}] (one entry per row of {rows_of}), "
                         f"got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be integer class indices, got {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name} must lie in [0, {num_classes}), got values in [{lo}, {hi}]")
    return labels
