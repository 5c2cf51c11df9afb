"""A flat layout for optimizer state: one buffer per dtype instead of one per parameter leaf.

``flat_moments(tx)`` runs ``tx`` on a flattened view of the parameter tree: the leaves are
concatenated, in tree order, into one 1-D buffer per (compute dtype, sharding) group, so every
per-parameter buffer of ``tx``'s state (Adam's ``m`` and ``v``, AMSGrad's maximum, AdaMax's ``u``,
8-bit codes) is one buffer per group. A train step over N parameter leaves then carries N
parameters + about 2 state buffers across the ``jit`` boundary instead of 3N, and its moment math
is one kernel per group instead of one per leaf. The update math is ``tx``'s own, unchanged: on a
flat buffer every elementwise formula gives the same numbers as leaf by leaf.

Groups. A leaf larger than ``max_leaf_size`` elements keeps a buffer of its own: copying it in
and out of a flat buffer costs more than the per-leaf work it saves. Every other leaf joins the
group of its compute dtype (float32 for float32, bfloat16 and float16
leaves; float64 and the complex dtypes on their own), where ``tx`` computes anyway; the update of
each leaf is cast back to the gradient's dtype, as ``scale_by_adam`` does. A leaf sharded over the
axes of an ``Explicit`` mesh keeps a buffer of its own, in its own shape and sharding: flattening
it into a buffer with others would need communication. (Under an ``Auto`` mesh the shardings are
not visible while tracing, so every leaf is flattened and XLA places the buffer.)

Cost. The gradients are concatenated once per step, and each parameter's update is a slice of the
flat update. XLA:CPU compiles one kernel per distinct slice, so compile time grows with the number
of leaves even when they all have the same shape (see the README's performance section).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType

from adam_jax import _tree

PyTree = Any


class FlatMomentsState(NamedTuple):
    """State of :func:`flat_moments`: ``tx``'s state over the flat buffers (a dict per group)."""

    inner_state: Any


def explicit_spec(x: Any) -> tuple | None:
    """``x``'s partition spec, one entry per axis, when ``x`` (an array, a tracer or a
    ``jax.ShapeDtypeStruct``) lies on a mesh with ``Explicit`` axes; else ``None``."""
    if isinstance(x, jax.ShapeDtypeStruct):
        sharding = x.sharding
    else:
        sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or not any(t == AxisType.Explicit for t in getattr(mesh, "axis_types", ())):
        return None
    spec = tuple(sharding.spec)
    return spec + (None,) * (len(x.shape) - len(spec))


class _Layout(NamedTuple):
    """Where each leaf of a tree goes: ``keys[i]`` is the buffer of leaf ``i``."""

    treedef: Any
    keys: tuple[str, ...]  # the group (dtype name) or, for an own buffer, the leaf's path
    shapes: tuple[tuple[int, ...], ...]
    own: frozenset[str]  # keys that are one leaf in its own shape

    @classmethod
    def of(cls, tree: PyTree, max_leaf_size: int | None) -> _Layout:
        with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
        keys, shapes, own = [], [], set()
        for path, leaf in with_path:
            shape = tuple(jnp.shape(leaf))
            large = max_leaf_size is not None and math.prod(shape) > max_leaf_size
            if large or any(a is not None for a in explicit_spec(leaf) or ()):
                key = jax.tree_util.keystr(path)
                own.add(key)
            else:
                key = jnp.dtype(_tree.compute_dtype(jnp.result_type(leaf))).name
            keys.append(key)
            shapes.append(shape)
        return cls(treedef, tuple(keys), tuple(shapes), frozenset(own))

    def flatten(self, tree: PyTree) -> dict[str, jax.Array]:
        """One buffer per key: the group's leaves raveled and concatenated in tree order."""
        parts: dict[str, list[jax.Array]] = {}
        for key, leaf in zip(self.keys, self.treedef.flatten_up_to(tree), strict=True):
            leaf = jnp.asarray(leaf)
            if key in self.own:
                parts[key] = [leaf]
            else:
                parts.setdefault(key, []).append(leaf.astype(key).ravel())
        return {k: v[0] if k in self.own else jnp.concatenate(v) for k, v in parts.items()}

    def unflatten(self, flat: dict[str, jax.Array], like: PyTree) -> PyTree:
        """The tree the buffers stand for, each leaf cast to the dtype of the leaf of ``like``."""
        # Materialize the flat buffers first: otherwise XLA fuses the whole update math into the
        # kernel of every slice, one distinct kernel per leaf to compile (measured 3x slower).
        flat = jax.lax.optimization_barrier(flat)
        offsets: dict[str, int] = {}
        leaves = []
        for key, shape in zip(self.keys, self.shapes, strict=True):
            if key in self.own:
                leaf = flat[key]
            else:
                start, size = offsets.get(key, 0), math.prod(shape)
                offsets[key] = start + size
                leaf = jax.lax.slice(flat[key], (start,), (start + size,)).reshape(shape)
            leaves.append(leaf)
        return _tree.cast_to_updates(jax.tree.unflatten(self.treedef, leaves), like)


def flat_moments(
    tx: optax.GradientTransformation, *, max_leaf_size: int | None = 2**16
) -> optax.GradientTransformation:
    """Run ``tx`` with its per-parameter state in one flat buffer per dtype group.

    ``flat_moments(adam_jax.adam(1e-3))`` gives the same updates as ``adam_jax.adam(1e-3)``
    (bit for bit on CPU), with ``m`` and ``v`` each in one buffer for all float32 (and
    bfloat16/float16) leaves instead of one per leaf. It pays off for models of many small
    leaves, where per-buffer and per-kernel costs dominate the step. Put it outermost: around
    ``optax.chain(...)``, ``quantized_moments(...)`` and ``optax.inject_hyperparams(...)``; inside
    ``optax.masked``/``optax.partition``; and below ``monitor``. Transformations inside see the
    flat buffers, so masks and per-leaf labels belong outside it.

    Args:
      tx: any elementwise transformation or chain, e.g. ``adam_jax.adam(1e-3)``. Transformations
        that need the leaf structure (``optax.masked`` with a mask tree, per-leaf
        ``optax.partition``) do not go inside.
      max_leaf_size: leaves with more elements keep a buffer of their own (``None``: flatten
        every leaf). Copying a gradient into the flat buffer and the update out of it moves 16
        more bytes per element; that pays off only where a per-leaf cost outweighs it. The
        default, 65,536 elements, suits a CPU (about 35 microseconds of copying at 30 GB/s); on
        a GPU, where each buffer crossing ``jit`` costs several microseconds of host time and
        memory is 100x faster, ``None`` or a few million suits better.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`FlatMomentsState`.
    """
    if max_leaf_size is not None and (
        isinstance(max_leaf_size, bool) or not isinstance(max_leaf_size, int) or max_leaf_size < 0
    ):
        raise ValueError(
            f"flat_moments: max_leaf_size={max_leaf_size!r} is out of range: it must be an "
            "integer >= 0 or None."
        )
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(
            f"flat_moments: tx must be an optax.GradientTransformation, e.g. "
            f"adam_jax.adam(1e-3); got {type(tx).__name__} {tx!r:.60}."
        )

    def init_fn(params: optax.Params) -> FlatMomentsState:
        if _is_params_placeholder(params):
            # optax.tree_utils.tree_map_params probes init with a placeholder for the parameter
            # tree. No tree of this state has the parameters' structure: one opaque leaf says so.
            return FlatMomentsState(_NOT_PARAMS)
        _tree.check_float_params(params, "flat_moments")
        layout = _Layout.of(params, max_leaf_size)
        return FlatMomentsState(tx.init(layout.flatten(params)))

    def update_fn(
        updates: optax.Updates, state: FlatMomentsState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, FlatMomentsState]:
        if not isinstance(state, FlatMomentsState):
            raise TypeError(
                f"flat_moments: state must be the FlatMomentsState its init returned; got "
                f"{type(state).__name__}."
            )
        layout = _Layout.of(updates, max_leaf_size)
        flat_params = None if params is None else layout.flatten(params)
        flat_updates, inner = tx.update(layout.flatten(updates), state.inner_state, flat_params)
        return layout.unflatten(flat_updates, updates), FlatMomentsState(inner)

    return optax.GradientTransformation(init_fn, update_fn)


_NOT_PARAMS = "flat_moments: no parameter-shaped tree"


def _is_params_placeholder(params: Any) -> bool:
    return type(params).__name__ == "_ParamsPlaceholder" and not jax.tree.leaves(params)


def buffer_sharding(key: str, params_shardings: PyTree, replicated: Any) -> Any:
    """The sharding of the flat buffer ``key`` for parameters placed as ``params_shardings``: a
    leaf's own buffer (its key is the leaf's path) keeps the leaf's sharding, a group buffer (its
    key is a dtype name) is ``replicated``; ``None`` for a key that is neither."""
    by_path = {
        jax.tree_util.keystr(path): s
        for path, s in jax.tree_util.tree_leaves_with_path(params_shardings)
    }
    if key in by_path:
        return by_path[key]
    try:
        jnp.dtype(key)
    except TypeError:
        return None
    return replicated
