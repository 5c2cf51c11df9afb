"""Old import paths of modules that moved, kept working as aliases of the new ones.

``adam_jax.cli``, ``adam_jax.bench``, ``adam_jax.demo`` and ``adam_jax.paper`` moved to
:mod:`adam_jax.tools` in 0.4.0: they are applications built on the library, and nothing in the
library imports them. Importing an old path gives the very module object of the new one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType


def alias_module(old: str, new: str) -> ModuleType:
    """Make ``import old`` give module ``new`` (called from ``old`` itself)."""
    module = importlib.import_module(new)
    sys.modules[old] = module
    return module


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``old.X`` as the module ``new.X`` for every aliased package ``old``, except the
    ``__main__`` of ``python -m old``, which stays a file of its own."""

    def __init__(self) -> None:
        self.packages: dict[str, str] = {}

    def find_spec(self, fullname, path=None, target=None):
        for old, new in self.packages.items():
            if fullname.startswith(old + ".") and not fullname.endswith(".__main__"):
                return importlib.util.spec_from_loader(
                    fullname, _AliasLoader(new + fullname[len(old) :])
                )
        return None


_finder = _AliasFinder()


def alias_package_modules(old: str, new: str) -> None:
    """Make ``import old.X`` give module ``new.X`` for every submodule X of package ``new``."""
    _finder.packages[old] = new
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
