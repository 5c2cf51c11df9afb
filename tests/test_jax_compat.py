"""adam_jax on the JAX users install today: no experimental or removed JAX API on the import path.

CI tests the newest JAX (on Python 3.13) and the oldest supported one, 0.10.2 (on Python 3.11).
JAX 0.11 removed ``jax.experimental.shard_alike``. The package uses no ``jax.experimental`` API at
all (checked statically below), so on the newest leg, a JAX without it, the package's sharding
tests run as they are; on a JAX that still has it, an import hook makes it missing and the
package must still import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.blocked_imports import env_without

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = REPO_ROOT / "adam_jax"
REMOVED_IN_NEWER_JAX = ["jax.experimental.shard_alike"]


def _run(code: str, env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_no_jax_experimental_import_at_module_level():
    """Static: no module of the package imports ``jax.experimental`` at its top level."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:  # module level only; a lazy import inside a function is allowed
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(REPO_ROOT)}:{node.lineno} {name}"
                for name in names
                if name.startswith("jax.experimental")
            ]
    assert not offenders, offenders


def test_importing_every_module_loads_no_new_jax_experimental_module():
    """Dynamic: importing adam_jax and all its submodules adds no ``jax.experimental`` module
    beyond those that jax, optax and chex load themselves."""
    result = _run(
        "import sys, pkgutil, importlib\n"
        "import jax, optax, chex\n"
        "before = {m for m in sys.modules if m.startswith('jax.experimental')}\n"
        "import adam_jax\n"
        "for info in pkgutil.walk_packages(adam_jax.__path__, 'adam_jax.'):\n"
        "    if not info.name.endswith('__main__'):\n"
        "        importlib.import_module(info.name)\n"
        "after = {m for m in sys.modules if m.startswith('jax.experimental')}\n"
        "print(sorted(after - before))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_imports_when_shard_alike_is_removed(tmp_path):
    env = env_without(tmp_path, REMOVED_IN_NEWER_JAX)
    result = _run(
        "import importlib\n"
        "try:\n"
        "    importlib.import_module('jax.experimental.shard_alike')\n"
        "except ModuleNotFoundError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('the import hook did not block shard_alike')\n"
        "import adam_jax\n"
        "print('imported', adam_jax.__name__)\n",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "imported adam_jax" in result.stdout


def test_no_jax_experimental_use_anywhere():
    """Static, stricter than the module-level check: no import of ``jax.experimental`` even inside
    a function, and no ``jax.experimental.X`` attribute reached through ``import jax``. With none,
    the newest leg of CI (a JAX without ``shard_alike``) runs every sharding test as it is."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Attribute) and node.attr == "experimental":
                names = [ast.unparse(node)]
            offenders += [
                f"{path.relative_to(REPO_ROOT)}:{node.lineno} {name}"
                for name in names
                if name.startswith("jax.experimental")
            ]
    assert not offenders, offenders


def test_conftest_guard_turns_a_warning_inside_adam_jax_into_an_error():
    """The test configuration's guard (tests/conftest.py) catches warnings that JAX attributes to
    its own internals but that adam_jax code triggered: here a lossy complex-to-real cast."""
    import jax.numpy as jnp
    import pytest

    from adam_jax import _tree

    complex_tree = {"w": jnp.ones(2, jnp.complex64)}
    real_tree = {"w": jnp.ones(2, jnp.float32)}
    with pytest.raises(AssertionError, match="raised inside adam_jax"):
        _tree.cast_like(complex_tree, real_tree)


def test_real_gradient_of_a_complex_parameter_warns_nothing_and_is_exact():
    """A real gradient of a complex parameter: real updates, equal to Adam on a real parameter
    (optax as reference), with every warning an error (JAX's complex-to-real cast warned here)."""
    import warnings

    import chex
    import jax
    import jax.numpy as jnp
    import optax

    import adam_jax

    params = {"z": jnp.array([1 + 2j, -0.5j, 3.0], jnp.complex64)}
    grads = [jnp.array([0.5, -1.0, 2.0]), jnp.array([0.0, 0.25, -1.0])]
    tx, ref = adam_jax.adam(0.1), optax.adam(0.1)
    state, ref_state = tx.init(params), ref.init({"z": jnp.zeros(3)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for use_jit in (False, True):
            update = jax.jit(tx.update) if use_jit else tx.update
            s, r = state, ref_state
            for g in grads:
                u, s = update({"z": g}, s, params)
                want, r = ref.update({"z": g}, r)
                assert u["z"].dtype == jnp.float32
                chex.assert_trees_all_close(u, want, rtol=2e-5, atol=1e-8)
