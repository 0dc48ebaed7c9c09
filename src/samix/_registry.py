"""One name -> object registry, used by every registry of samix (mixers, models, losses,
datasets, transform presets, corruptions, generators, algorithms).

>>> from samix._registry import Registry
>>> MIXERS = Registry("mixer", name_attr="name")   # registered classes get ``cls.name = "<name>"``
>>> @MIXERS.register("mixup")
... class MixUp: ...
>>> class CutMix: ...
>>> _ = MIXERS.register("cutmix", CutMix)          # direct form: register(name, obj) returns obj
>>> MIXERS.list(), CutMix.name
(['cutmix', 'mixup'], 'cutmix')
>>> MIXERS.build("mixup")                          # == MIXERS.get("mixup")()     # doctest: +SKIP
>>> MIXERS.get("nope")
Traceback (most recent call last):
ValueError: unknown mixer 'nope'; known mixers: cutmix, mixup

Rules, the same for every registry:

* a name is a non-empty ``str`` (else ``TypeError``), registered once: a second object under a
  taken name raises ``ValueError("<kind> '<name>' is already registered (...)")``; registering
  the *same* object again is a no-op (a module imported twice);
* :meth:`Registry.get` of an unknown name (any type: ``None``, ``3``, ``""``) raises ONE format,
  ``ValueError("unknown <kind> '<name>'; known <kinds>: a, b, c")``, which callers may extend
  with more known entries (``also=``, e.g. the ``timm:<name>`` family of models);
* :meth:`Registry.list` gives the names sorted (``sort=False``: in registration order, e.g. the
  corruptions in the benchmark's order).

The registry's dict is :attr:`Registry.entries` (live: code that keeps a module-level alias such
as ``samix.mixing.registry._MIXERS`` sees and makes the same changes).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Generic, Iterable, Iterator, List, Optional, Tuple, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")

_MISSING: Any = object()


def _plural(kind: str) -> str:
    return kind + ("es" if kind.endswith(("s", "x", "sh", "ch")) else "s")


def _describe(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__


class Registry(Generic[T]):
    """Name -> object map with one registration rule and one error format.

    Args:
        kind: what is registered, singular, used in messages (``"mixer"``, ``"loss"``,
            ``"dataset"``, ``"preset"``, ...).
        plural: the plural used in "known <plural>: ..." (default ``kind + "s"``, or ``+ "es"``
            after s/x/sh/ch: ``"losses"``).
        name_attr: when given, :meth:`register` sets this attribute of the registered object to
            its name (mixers: ``cls.name``; algorithms: ``cls.algorithm_name``).
        sort: :meth:`list` (and the error message) give names sorted (default) or in
            registration order.
    """

    def __init__(self, kind: str, *, plural: Optional[str] = None, name_attr: Optional[str] = None,
                 sort: bool = True) -> None:
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"kind must be a non-empty str, got {kind!r}")
        self.kind = kind
        self.plural = plural or _plural(kind)
        self.name_attr = name_attr
        self.sort = sort
        #: the registered objects by name (the live dict; mutate through :meth:`register`)
        self.entries: Dict[str, T] = {}
        #: names provided by a module of a higher layer, imported on first use (:meth:`declare`)
        self.plugins: Dict[str, str] = {}

    # ------------------------------------------------------------------ registration
    def register(self, name: str, obj: T = _MISSING):
        """Register ``obj`` under ``name`` and return it; without ``obj``, a decorator that does so.

        Raises ``TypeError`` unless ``name`` is a non-empty str, and ``ValueError`` when the name
        is taken by another object.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty str, got {name!r}")

        def deco(target: T) -> T:
            old = self.entries.get(name, _MISSING)
            if old is not _MISSING and old is not target:
                raise ValueError(f"{self.kind} {name!r} is already registered ({_describe(old)})")
            if self.name_attr is not None:
                setattr(target, self.name_attr, name)
            self.entries[name] = target
            return target

        return deco if obj is _MISSING else deco(obj)

    def declare(self, name: str, module: str) -> None:
        """Declare that the module ``module`` (dotted path) registers ``name`` when imported.

        For an entry built on a higher layer than the registry's package (the ``samix_p`` policy runs a
        pre-trained generator, which sits above :mod:`samix.mixing`): the name is listed at once and its
        module imported the first time the name is looked up, like a package's entry points. The
        registry's package never imports that module itself."""
        if not isinstance(name, str) or not name or not isinstance(module, str) or not module:
            raise TypeError(f"declare needs a name and a module path, got {name!r}, {module!r}")
        self.plugins[name] = module

    def _load(self, name: Any) -> None:
        module = self.plugins.get(name) if isinstance(name, str) else None
        if module is not None and name not in self.entries:
            import importlib

            importlib.import_module(module)
            if name not in self.entries:
                raise RuntimeError(f"module {module} was declared to register {self.kind} {name!r} but did not")

    def load_all(self) -> None:
        """Import every declared plugin module (so that :attr:`entries` holds every entry)."""
        for name in list(self.plugins):
            self._load(name)

    # ------------------------------------------------------------------ look-up
    def list(self) -> List[str]:
        """The registered and declared names, sorted (or in registration order with ``sort=False``)."""
        names = list(self.entries) + [n for n in self.plugins if n not in self.entries]
        return sorted(names) if self.sort else names

    def unknown(self, name: Any, also: Iterable[str] = ()) -> ValueError:
        """The error for an unknown ``name``: ``unknown <kind> 'x'; known <kinds>: a, b`` (plus ``also``)."""
        known = ", ".join([*self.list(), *also]) or "none"
        return ValueError(f"unknown {self.kind} {name!r}; known {self.plural}: {known}")

    def get(self, name: str) -> T:
        """The object registered as ``name``; ``ValueError`` naming the known ones otherwise."""
        self._load(name)
        if not isinstance(name, str) or name not in self.entries:
            raise self.unknown(name)
        return self.entries[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``get(name)(*args, **kwargs)``."""
        factory: Callable[..., Any] = self.get(name)  # type: ignore[assignment]
        return factory(*args, **kwargs)

    def items(self) -> List[Tuple[str, T]]:
        """``(name, object)`` pairs in the order of :meth:`list` (declared plugins are loaded)."""
        self.load_all()
        return [(n, self.entries[n]) for n in self.list()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.entries or name in self.plugins)

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self.list())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.list()})"
