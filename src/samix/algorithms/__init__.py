"""Training algorithms (what one step does), registered by name: one file per method plus its
``@register_algorithm("name")`` line (every module of this package is imported here)."""

from .base import (
    ALGORITHMS,
    Algorithm,
    EvalContext,
    TransformedDataset,
    build_algorithm,
    get_algorithm_class,
    list_algorithms,
    register_algorithm,
    split_batch,
)

from .._discover import import_submodules as _import_submodules

_import_submodules(__name__, __path__)

__all__ = ["ALGORITHMS", "Algorithm", "EvalContext", "TransformedDataset", "build_algorithm",
           "get_algorithm_class", "list_algorithms", "register_algorithm", "split_batch"]
