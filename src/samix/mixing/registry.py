"""Name -> mixer class registry. A new policy is one file plus one ``@register_mixer`` line."""

from __future__ import annotations

from typing import Callable, Type

from samix._registry import Registry

#: The mixing policies; registering a class sets ``cls.name`` to its name.
MIXERS: Registry[type] = Registry("mixer", name_attr="name")
_MIXERS = MIXERS.entries  # the live dict (tests insert throw-away policies into it)
# Policies built on a higher layer, imported the first time their name is used (see Registry.declare):
MIXERS.declare("samix_p", "samix.pretrained.policy")


def register_mixer(name: str) -> Callable[[Type], Type]:
    """Class decorator: register a :class:`~samix.mixing.base.Mixer` subclass as ``name``."""
    return MIXERS.register(name)


def list_mixers() -> list[str]:
    """Names of every registered mixing policy, sorted."""
    return MIXERS.list()


def get_mixer_class(name: str) -> type:
    """The class registered as ``name``; ``ValueError`` naming the known mixers otherwise."""
    return MIXERS.get(name)


def build_mixer(name: str, **kwargs):
    """Build the mixer registered as ``name`` with its keyword arguments.

    Raises ``ValueError`` naming the known mixers when ``name`` is unknown, and a ``TypeError``
    naming the option (and the policies that do take it) for an option the policy does not take,
    e.g. ``pretrained`` with ``name="mixup"`` (it belongs to ``samix_p``).
    """
    cls = get_mixer_class(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        hint = _option_hint(name, err)
        if hint is None:
            raise
        raise TypeError(f"{err}; {hint}") from None


def _init_options(cls) -> set:
    import inspect

    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        names.update(p.name for p in inspect.signature(init).parameters.values()
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    names.discard("self")
    return names


def mixer_options(name: str) -> set:
    """The constructor options of the policy registered as ``name``."""
    return _init_options(get_mixer_class(name))


def _option_hint(name: str, err: TypeError):
    """For "unexpected keyword argument 'x'": which registered policies take option ``x``."""
    import re

    m = re.search(r"unexpected keyword argument '([^']+)'", str(err))
    if m is None:
        return None
    option = m.group(1)
    owners = [n for n, c in MIXERS.items() if n != name and option in _init_options(c)]
    if not owners:
        return f"mixer {name!r} takes {sorted(_init_options(_MIXERS[name]))}"
    return (f"option {option!r} belongs to mixer(s) {owners}, not to {name!r} "
            f"(config: mixer.name={owners[0]})")
