"""Backbones with a uniform "feature at stage l" interface (see :mod:`samix.models.base`)."""

from .base import Backbone, build_model, list_models, register_model, register_model_namespace

from .._discover import import_submodules as _import_submodules

_import_submodules(__name__, __path__)

__all__ = ["Backbone", "build_model", "list_models", "register_model", "register_model_namespace"]
