"""Training algorithms (what one step does), registered by name."""

from .base import Algorithm, build_algorithm, list_algorithms, register_algorithm

from .._discover import import_submodules as _import_submodules

_import_submodules(__name__, __path__)

__all__ = ["Algorithm", "build_algorithm", "list_algorithms", "register_algorithm"]
