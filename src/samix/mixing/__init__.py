"""Stateless batch mixing policies.

>>> from samix.mixing import build_mixer
>>> mixer = build_mixer("mixup", alpha=1.0, num_classes=10)
>>> images, targets = mixer(images, labels)   # doctest: +SKIP

Every policy follows the convention of :mod:`samix.mixing.base`. Each policy is
one module of this package registered with ``@register_mixer("name")``; all
modules are imported here, so adding a file is enough.
"""

from .base import MODES, MixResult, Mixer, check_images
from .registry import build_mixer, get_mixer_class, list_mixers, register_mixer

from .._discover import import_submodules as _import_submodules

_import_submodules(__name__, __path__)

__all__ = ["MODES", "MixResult", "Mixer", "build_mixer", "check_images", "get_mixer_class",
           "list_mixers", "register_mixer"]
