"""Old import paths for names that moved: a *facade* module reads and writes each moved name in
its new home module.

``import samix.data.datasets as sdd; sdd.FASHION_MNIST_SYSTEM_DIR = path`` (a documented
setting) and ``monkeypatch.setattr(samix.viz, "mixing_cells", spy)`` must act where the code
reads the name, i.e. in ``samix.data.mnist`` and ``samix.viz.grid``. A plain re-export
(``from .grid import mixing_cells``) would only rebind the facade's copy. So::

    forward_names(__name__, {"mixing_cells": grid, "mixing_grid": grid, ...})

turns the calling module into a facade: getting, setting and deleting a forwarded attribute
goes to its home module; every other attribute behaves as usual.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Mapping

__all__ = ["forward_names"]

_HOMES = "_facade_homes"


def _forwarding_property(name: str, home: types.ModuleType) -> property:
    def fget(self):
        return getattr(home, name)

    def fset(self, value):
        setattr(home, name, value)

    def fdel(self):
        delattr(home, name)

    return property(fget, fset, fdel, doc=f"{home.__name__}.{name}")


def forward_names(module_name: str, homes: Mapping[str, types.ModuleType]) -> None:
    """Make module ``module_name`` forward each name of ``homes`` to ``homes[name]``.

    Call it at the end of the facade module (``forward_names(__name__, {...})``). The module gets
    a class of its own (a :class:`types.ModuleType` subclass) with one data descriptor per
    forwarded name, so reads always see the home's current value and writes (including
    ``monkeypatch.setattr`` and its undo) land in the home. Names the module imported from the
    homes are dropped from its own dict, so no stale copy remains.
    """
    module = sys.modules[module_name]
    for name, home in homes.items():
        if not hasattr(home, name):
            raise AttributeError(f"{home.__name__} has no attribute {name!r} to forward from {module_name}")
        module.__dict__.pop(name, None)
    all_homes = {**module.__dict__.get(_HOMES, {}), **homes}
    module.__dict__[_HOMES] = all_homes
    namespace: dict[str, Any] = {n: _forwarding_property(n, h) for n, h in all_homes.items()}
    namespace["__dir__"] = lambda self: sorted(set(self.__dict__) | set(all_homes))
    module.__class__ = type(f"FacadeModule[{module_name}]", (types.ModuleType,), namespace)
