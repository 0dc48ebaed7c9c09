"""Name -> mixer class registry. A new policy is one file plus one ``@register_mixer`` line."""

from __future__ import annotations

from typing import Callable, Dict, Type

_MIXERS: Dict[str, type] = {}


def register_mixer(name: str) -> Callable[[Type], Type]:
    def deco(cls):
        if name in _MIXERS:
            raise ValueError(f"mixer {name!r} is already registered ({_MIXERS[name].__name__})")
        cls.name = name
        _MIXERS[name] = cls
        return cls

    return deco


def list_mixers() -> list[str]:
    """Names of every registered mixing policy, sorted."""
    return sorted(_MIXERS)


def get_mixer_class(name: str) -> type:
    if not isinstance(name, str) or name not in _MIXERS:
        raise ValueError(f"unknown mixer {name!r}; known mixers: {', '.join(list_mixers())}")
    return _MIXERS[name]


def build_mixer(name: str, **kwargs):
    """Build the mixer registered as ``name`` with its keyword arguments.

    Raises ``ValueError`` naming the known mixers when ``name`` is unknown.
    """
    return get_mixer_class(name)(**kwargs)
