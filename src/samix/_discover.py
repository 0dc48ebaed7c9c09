"""Import every module of a package so that its ``@register_*`` decorators run.

This keeps "a new method = one file + one registry line" literal: dropping a
file into ``samix/mixing/`` (or ``models/``, ``algorithms/``) registers it.
"""

from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package_name: str, package_path) -> None:
    for info in sorted(pkgutil.walk_packages(package_path, prefix=package_name + "."), key=lambda i: i.name):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf.startswith("_"):
            continue
        importlib.import_module(info.name)
