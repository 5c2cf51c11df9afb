"""``flax.serialization`` support for adam_jax's state nodes that are not NamedTuples.

Flax serializes dicts, lists, tuples, NamedTuples and the types registered with it; every other
pytree node (a dataclass such as :class:`adam_jax.quantize.QuantizedMoment`) makes
``flax.serialization.to_bytes`` raise. This module registers those nodes with Flax as soon as
``flax.serialization`` is imported, before or after adam_jax, without importing Flax itself.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.util
import sys
from typing import Any

_MODULE = "flax.serialization"


def _register(serialization: Any) -> None:
    from adam_jax.quantize import QuantizedMoment

    def to_state_dict(q: QuantizedMoment) -> dict[str, Any]:
        return {
            "codes": serialization.to_state_dict(q.codes),
            "scales": serialization.to_state_dict(q.scales),
        }

    def from_state_dict(target: QuantizedMoment, state: dict[str, Any]) -> QuantizedMoment:
        return dataclasses.replace(
            target,
            codes=serialization.from_state_dict(target.codes, state["codes"], name="codes"),
            scales=serialization.from_state_dict(target.scales, state["scales"], name="scales"),
        )

    serialization.register_serialization_state(
        QuantizedMoment, to_state_dict, from_state_dict, override=True
    )


class _Loader(importlib.abc.Loader):
    """Runs Flax's own loader, then registers adam_jax's nodes."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _register(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``flax.serialization`` as the other finders do, with :class:`_Loader` around its
    loader; removes itself once used."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Register now if Flax is imported, else when it is."""
    if _MODULE in sys.modules:
        _register(sys.modules[_MODULE])
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
