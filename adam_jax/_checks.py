"""Trace-time checks of the arguments of ``update``: structure, shapes and dtypes.

Optax applies a transformation leaf by leaf with ``jax.tree.map``. Given gradients that do not
match the optimizer state, that fails deep inside with a broadcasting error naming no parameter,
or, worse, silently produces updates of the wrong dtype. These checks run in Python on the static
structure, shapes and dtypes of the arguments, so under ``jax.jit`` they cost nothing at run time:
they run once, while tracing. Errors name the leaf path as ``jax.tree_util.keystr`` writes it
(``['layer']['kernel']``) and both shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

_FREEZE_HINT = (
    "Adam only updates floating-point or complex leaves. Freeze it with optax.masked(tx, mask) "
    "or send it to optax.set_to_zero() via optax.partition."
)


def _leaves(tree: PyTree) -> dict[str, Any]:
    """Leaf path (``keystr``) -> leaf; ``None`` and other empty nodes have no leaves."""
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _describe_paths(paths: list[str]) -> str:
    shown = ", ".join(paths[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def check_same_structure(where: str, name: str, tree: PyTree, ref_name: str, ref: PyTree) -> None:
    """Raise ``ValueError`` unless ``tree`` and ``ref`` have one tree structure; name the paths."""
    if jax.tree.structure(tree) == jax.tree.structure(ref):
        return
    got, want = _leaves(tree), _leaves(ref)
    missing = [p for p in want if p not in got]
    extra = [p for p in got if p not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"the {name} lacks leaf {_describe_paths(missing)} that {ref_name} has")
        if extra:
            parts.append(f"the {name} has leaf {_describe_paths(extra)} that {ref_name} lacks")
        detail = "; ".join(parts)
    else:
        detail = (
            f"the leaf paths agree but the containers differ: the {name} is "
            f"{jax.tree.structure(tree)}, {ref_name} is {jax.tree.structure(ref)}"
        )
    raise ValueError(
        f"{where}: the {name} and {ref_name} have different tree structures: {detail}. Gradients "
        "must have the structure of the parameters given to init."
    )


def check_same_shapes(where: str, name: str, tree: PyTree, ref_name: str, ref: PyTree) -> None:
    """Raise ``ValueError`` at the first leaf whose shape differs (structures already agree)."""
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(ref), strict=True
    ):
        if jnp.shape(x) != jnp.shape(y):
            raise ValueError(
                f"{where}: {name} leaf {jax.tree_util.keystr(path)} has shape {jnp.shape(x)}, "
                f"but in {ref_name} it has shape {jnp.shape(y)}."
            )


def check_float_leaves(where: str, name: str, tree: PyTree) -> None:
    """Raise ``TypeError`` naming the first integer/boolean (or float0) leaf of ``tree``."""
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        dtype = jnp.result_type(x)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{where}: {name} leaf {jax.tree_util.keystr(path)} has dtype {dtype}; "
                + _FREEZE_HINT
            )


def check_complex_agrees(where: str, updates: PyTree, moments: PyTree) -> None:
    """A complex gradient for a real parameter would lose its imaginary part in the state."""
    for (path, g), m in zip(
        jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(moments), strict=True
    ):
        g_dtype, m_dtype = jnp.result_type(g), jnp.result_type(m)
        if jnp.issubdtype(g_dtype, jnp.complexfloating) and not jnp.issubdtype(
            m_dtype, jnp.complexfloating
        ):
            raise TypeError(
                f"{where}: gradient leaf {jax.tree_util.keystr(path)} is complex ({g_dtype}) but "
                f"the optimizer state there is real ({m_dtype}), so the imaginary part would be "
                "dropped. Initialise the optimizer with complex parameters, or pass real gradients."
            )


def check_state_type(where: str, state: Any, expected: type) -> None:
    """``TypeError`` unless ``state`` is the kind of state this transformation's ``init`` makes.

    Another optimizer's state can have the same fields (AdaMax's ``nu`` holds u_t, Adam's holds
    v_t), so it would be misread silently.
    """
    if not isinstance(state, expected):
        raise TypeError(
            f"{where}: update was given a {type(state).__name__}, but its init makes a "
            f"{expected.__name__}. Pass the state that this optimizer's init returned; a state "
            "made by another optimizer would be misread."
        )


def check_update_args(
    where: str,
    updates: PyTree,
    params: PyTree | None = None,
    state: Mapping[str, PyTree] | None = None,
) -> None:
    """Check ``update(updates, state, params)`` before any arithmetic.

    - ``updates`` must be floating-point or complex, leaf by leaf (``TypeError``);
    - each tree in ``state`` (e.g. ``{"mu": state.mu, "nu": state.nu}``, built by ``init`` from the
      parameters) and ``params``, when given, must have the structure and shapes of ``updates``
      (``ValueError``); ``params`` must be floating-point too (``TypeError``);
    - a complex gradient needs a complex first moment (``TypeError``).

    Only static properties are read, so this is free under ``jax.jit``.
    """
    check_float_leaves(where, "gradient", updates)
    for key, tree in (state or {}).items():
        ref_name = f"the optimizer state ({key})"
        check_same_structure(where, "gradient", updates, ref_name, tree)
        check_same_shapes(where, "gradient", updates, ref_name, tree)
    if state and "mu" in state:
        check_complex_agrees(where, updates, state["mu"])
    if params is not None:
        check_same_structure(where, "gradient", updates, "the params", params)
        check_same_shapes(where, "gradient", updates, "the params", params)
        check_float_leaves(where, "parameter", params)
