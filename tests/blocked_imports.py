"""Run Python as if some modules were not installed: an import hook in a ``sitecustomize.py``.

``env_without(tmp_path, ["jax.experimental.shard_alike"])`` returns an environment for
``subprocess``: every Python started with it (``python -m pytest``, ``python -m adam_jax``, a
console script) raises ``ModuleNotFoundError`` on importing a blocked module or any of its
submodules, exactly as after an upstream removal or without an optional extra.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_SITECUSTOMIZE = """
import importlib.abc
import os
import sys

_BLOCKED = tuple(m for m in os.environ.get("ADAM_JAX_TEST_BLOCKED", "").split(",") if m)


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in _BLOCKED):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by a test)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
"""


def env_without(tmp_path: Path, modules: Iterable[str]) -> dict[str, str]:
    """A copy of ``os.environ`` in which ``modules`` cannot be imported."""
    hook_dir = tmp_path / "blocked_imports"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook_dir), env.get("PYTHONPATH")]))
    env["ADAM_JAX_TEST_BLOCKED"] = ",".join(modules)
    return env
