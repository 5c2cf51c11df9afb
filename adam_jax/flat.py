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
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax import _checks, _tree, state_nodes

PyTree = Any


@state_nodes.Regrouped.register
class FlatMomentsState(NamedTuple):
    """State of :func:`flat_moments`: ``tx``'s state over the flat buffers (a dict per group).

    A :class:`adam_jax.state_nodes.Regrouped` state: the state tools lay it out, store it and
    restore it through the methods below."""

    inner_state: Any

    def place(self, own: Any, group: Any, other: Any) -> FlatMomentsState:
        def one(key: str, node: Any) -> Any:
            return group(node) if _is_group_key(key) else own(key, node)

        return FlatMomentsState(
            jax.tree.map(
                lambda x: {k: one(k, v) for k, v in x.items()} if _is_buffers(x) else other,
                self.inner_state,
                is_leaf=lambda x: _is_buffers(x) or state_nodes.stands_for_one_param(x),
            )
        )

    def own_paths(self) -> frozenset[str]:
        return frozenset(
            k
            for buffers in _buffer_dicts(self.inner_state)
            for k in buffers
            if not _is_group_key(k)
        )

    def per_parameter(self, params: Any) -> FlatMomentsState:
        """The buffers as ``{path of a leaf of params: its part}``, each part in the leaf's shape
        and the buffer's dtype, bit for bit: the layout in which every leaf has a buffer of its
        own, whatever the grouping (``max_leaf_size``) and the shardings were. A dict whose
        layout cannot be read from ``params`` stays as it is: 8-bit codes (a block spans
        leaves), and the buffers of some of the parameters only (``optax.masked`` around)."""

        def one(buffers: dict[str, Any]) -> dict[str, Any]:
            layout = _Layout.of_buffers(buffers, params)
            if layout is None:
                return buffers
            return dict(zip(layout.paths, layout.split(buffers), strict=True))

        return _map_buffers(one, self)

    def from_per_parameter(self, stored: Any, params: Any, shardings: Any) -> FlatMomentsState:
        def one(parts: dict[str, Any], like: dict[str, Any], placed: dict[str, Any]) -> dict:
            layout = _Layout.of_buffers(like, params)
            if layout is None:
                return parts
            joined = layout.join([parts[path] for path in layout.paths])
            return {k: jax.device_put(v, placed[k]) for k, v in joined.items()}

        return _map_buffers(one, stored, self, shardings)


class _Layout(NamedTuple):
    """Where each leaf of a tree goes: ``keys[i]`` is the buffer of leaf ``i``."""

    treedef: Any
    keys: tuple[str, ...]  # the group (dtype name) or, for an own buffer, the leaf's path
    shapes: tuple[tuple[int, ...], ...]
    own: frozenset[str]  # keys that are one leaf in its own shape
    paths: tuple[str, ...]  # the leaves' paths (``jax.tree_util.keystr``)

    @classmethod
    def of(cls, tree: PyTree, max_leaf_size: int | None) -> _Layout:
        def own(path: str, leaf: Any) -> bool:
            large = max_leaf_size is not None and math.prod(jnp.shape(leaf)) > max_leaf_size
            return large or any(a is not None for a in _tree.explicit_spec(leaf) or ())

        return cls._build(tree, own)

    @classmethod
    def of_buffers(cls, buffers: dict[str, Any], params: PyTree) -> _Layout | None:
        """The layout that put the leaves of ``params`` into ``buffers`` (a leaf whose path is a
        key has a buffer of its own, the others join their dtype's group), or ``None`` when
        ``buffers`` do not hold exactly those leaves: a mask around ``flat_moments`` left some
        out, or a buffer is not one array (8-bit codes and scales)."""
        layout = cls._build(params, lambda path, leaf: path in buffers)
        want = layout.buffer_shapes()
        if buffers.keys() != want.keys() or not all(_is_array(v) for v in buffers.values()):
            return None
        return layout if all(tuple(buffers[k].shape) == s for k, s in want.items()) else None

    @classmethod
    def _build(cls, tree: PyTree, own: Any) -> _Layout:
        with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
        keys, shapes, owned, paths = [], [], set(), []
        for path, leaf in with_path:
            name = jax.tree_util.keystr(path)
            if own(name, leaf):
                key = name
                owned.add(key)
            else:
                key = jnp.dtype(_tree.compute_dtype(jnp.result_type(leaf))).name
            keys.append(key)
            shapes.append(tuple(jnp.shape(leaf)))
            paths.append(name)
        return cls(treedef, tuple(keys), tuple(shapes), frozenset(owned), tuple(paths))

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each buffer: a leaf's own shape, or the total size of the group."""
        sizes: dict[str, int] = {}
        for key, shape in zip(self.keys, self.shapes, strict=True):
            sizes[key] = sizes.get(key, 0) + math.prod(shape)
        own = dict(zip(self.keys, self.shapes, strict=True))
        return {k: own[k] if k in self.own else (n,) for k, n in sizes.items()}

    def flatten(self, tree: PyTree) -> dict[str, jax.Array]:
        """One buffer per key: the group's leaves raveled and concatenated in tree order."""
        leaves = self.treedef.flatten_up_to(tree)
        return self.join(
            [
                jnp.asarray(leaf) if key in self.own else jnp.asarray(leaf).astype(key)
                for key, leaf in zip(self.keys, leaves, strict=True)
            ]
        )

    def join(self, leaves: list[Any]) -> dict[str, jax.Array]:
        """The buffers holding ``leaves`` (one per leaf of the tree, in order), dtypes kept."""
        parts: dict[str, list[jax.Array]] = {}
        for key, leaf in zip(self.keys, leaves, strict=True):
            if key in self.own:
                parts[key] = [leaf]
            else:
                parts.setdefault(key, []).append(jnp.ravel(leaf))
        return {k: v[0] if k in self.own else jnp.concatenate(v) for k, v in parts.items()}

    def split(self, flat: dict[str, jax.Array]) -> list[jax.Array]:
        """Each leaf's part of the buffers, in its own shape and the buffer's dtype."""
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
        return leaves

    def unflatten(self, flat: dict[str, jax.Array], like: PyTree) -> PyTree:
        """The tree the buffers stand for, each leaf cast to the dtype of the leaf of ``like``."""
        # Materialize the flat buffers first: otherwise XLA fuses the whole update math into the
        # kernel of every slice, one distinct kernel per leaf to compile (several times slower).
        flat = jax.lax.optimization_barrier(flat)
        leaves = self.split(flat)
        return _tree.cast_to_updates(jax.tree.unflatten(self.treedef, leaves), like)


def flat_moments(
    tx: optax.GradientTransformation, *, max_leaf_size: int | None = 2**16
) -> optax.GradientTransformation:
    """Run ``tx`` with its per-parameter state in one flat buffer per dtype group.

    ``flat_moments(adam_jax.adam(1e-3))`` computes the same updates as ``adam_jax.adam(1e-3)``
    with the same formulas, to float32 rounding: not bit for bit, because XLA compiles one long
    buffer to other machine code than many small leaves (under ``jit`` the two differ in the
    last bits of some elements). ``m`` and ``v`` are each one buffer for all float32 (and
    bfloat16/float16) leaves instead of one per leaf. It pays off for models of many small
    leaves, where per-buffer and per-kernel costs dominate the step. Put it outermost: around
    ``optax.chain(...)``, ``quantized_moments(...)`` and ``optax.inject_hyperparams(...)``; inside
    ``optax.masked``/``optax.partition``; and below ``monitor``. Transformations inside see the
    flat buffers, so masks and per-leaf labels belong outside it.

    Parameters and gradients of different dtypes (float64 parameters with float32 gradients,
    complex parameters with real gradients) are grouped by the parameters' dtypes, as at
    ``init``: pass ``params`` to ``update`` then.

    ``optax.tree_utils.tree_map_params(tx, f, state)`` hands ``f`` each flat buffer, the moments
    of a group's parameters concatenated: ``f`` may change values and dtypes element by element
    (``lambda m: m.astype(jnp.bfloat16)`` casts every parameter's moments), not shapes (the next
    ``update`` raises ``ValueError``). Extra trees shaped like the parameters
    (``tree_map_params(tx, f, state, specs)``) cannot be paired with the buffers: for shardings
    use :func:`adam_jax.state_sharding`; ``adam_jax.state_nodes.opaque_init(tx)`` in place of
    ``tx`` leaves the flat states to ``transform_non_params``.

    Args:
      tx: any elementwise transformation or chain, e.g. ``adam_jax.adam(1e-3)``. Transformations
        that choose leaves by their place in the parameter tree (``optax.masked``,
        ``optax.partition``, ``adamw``'s ``mask``) are refused inside: ``init`` raises
        ``ValueError`` showing how to put them outside.
      max_leaf_size: leaves with more elements keep a buffer of their own (``None``: flatten
        every leaf). Copying a gradient into the flat buffer and the update out of it moves 16
        more bytes per element; that pays off only where a per-leaf cost outweighs it. The
        default, 65,536 elements, suits a CPU (about 35 microseconds of copying at 30 GB/s); on
        a GPU, where each buffer crossing ``jit`` costs several microseconds of host time and
        memory is 100x faster, ``None`` or a few million suits better.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`FlatMomentsState`.
    """
    max_leaf_size = _check_max_leaf_size(max_leaf_size)
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(
            f"flat_moments: tx must be an optax.GradientTransformation, e.g. "
            f"adam_jax.adam(1e-3); got {type(tx).__name__} {tx!r:.60}."
        )

    def init_fn(params: optax.Params) -> FlatMomentsState:
        if _is_params_placeholder(params):
            # optax.tree_utils.tree_map_params probes init with a placeholder for the parameter
            # tree. tx's state over it marks where tx keeps per-parameter state (here: the flat
            # buffers, which tree_map_params then hands to its function), and wrappers (monitor)
            # find the Adam state in it.
            return FlatMomentsState(tx.init(params))
        _checks.check_float_leaves("flat_moments", "parameter", params)
        layout = _Layout.of(params, max_leaf_size)
        inner = tx.init(layout.flatten(params))
        _check_no_leaf_structure(inner)
        return FlatMomentsState(inner)

    def update_fn(
        updates: optax.Updates, state: FlatMomentsState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, FlatMomentsState]:
        if not isinstance(state, FlatMomentsState):
            raise TypeError(
                f"flat_moments: state must be the FlatMomentsState its init returned; got "
                f"{type(state).__name__}."
            )
        # The buffers are grouped by the parameters' dtypes, as at init (a float32 gradient of a
        # float64 parameter joins the float64 buffer); without params, by the gradients' own.
        layout = _Layout.of(updates if params is None else params, max_leaf_size)
        if params is None:
            _check_groups(layout, state.inner_state)
        _check_buffer_shapes(layout, state.inner_state)
        flat_params = None if params is None else layout.flatten(params)
        flat_updates, inner = tx.update(layout.flatten(updates), state.inner_state, flat_params)
        return layout.unflatten(flat_updates, updates), FlatMomentsState(inner)

    return optax.GradientTransformation(init_fn, update_fn)


def _check_max_leaf_size(max_leaf_size: Any) -> int | None:
    """``max_leaf_size`` as a Python int (NumPy integers accepted), or ``None``."""
    if max_leaf_size is None:
        return None
    if not isinstance(max_leaf_size, bool | np.bool_):
        try:
            value = operator.index(max_leaf_size)  # int, np.int64, ...: not 2.5, not "5"
        except TypeError:
            value = None
        if value is not None and value >= 0:
            return value
    raise ValueError(
        f"flat_moments: max_leaf_size={max_leaf_size!r} is out of range: it must be an "
        "integer >= 0 or None."
    )


def _is_params_placeholder(params: Any) -> bool:
    return type(params).__name__ == "_ParamsPlaceholder" and not jax.tree.leaves(params)


# States of transformations that choose leaves by their place in the parameter tree: inside
# flat_moments they would see the flat buffers instead.
_LEAF_CHOOSERS = (optax.MaskedState, optax.PartitionState, optax.MultiTransformState)

_MASK_FIX = """\
    # a mask (or labels) for the parameters goes outside flat_moments:
    optax.masked(adam_jax.flat_moments(adam_jax.adam(1e-3)), mask)
    # adamw's weight decay needs no state, so it can sit outside too:
    optax.chain(
        adam_jax.flat_moments(adam_jax.scale_by_adam()),
        optax.add_decayed_weights(1e-4, mask),
        optax.scale_by_learning_rate(1e-3),
    )"""


def _check_no_leaf_structure(inner_state: Any) -> None:
    """Refuse ``optax.masked``/``optax.partition`` inside: their masks and labels would be
    computed from the flat buffers (a callable mask silently picks the wrong leaves)."""
    is_chooser = lambda x: isinstance(x, _LEAF_CHOOSERS)
    found = [x for x in jax.tree.leaves(inner_state, is_leaf=is_chooser) if is_chooser(x)]
    if found:
        raise ValueError(
            f"flat_moments: tx contains a mask or per-leaf labels ({type(found[0]).__name__}: "
            "optax.masked, optax.partition, or a mask= argument such as adamw's). Inside "
            "flat_moments they would see the flat buffers, not your parameters, and choose the "
            "wrong leaves. Put them outside:\n" + _MASK_FIX
        )


def _is_buffer_key(key: Any) -> bool:
    """A key of the flat buffers: a group (a dtype name) or a leaf's own (its path)."""
    if not isinstance(key, str):
        return False
    return key == "" or key.startswith(("[", ".")) or _is_group_key(key)


def _is_group_key(key: str) -> bool:
    """The key of a group buffer: a dtype name ("float32"; not "b1", NumPy's alias of bool)."""
    if key == "" or key.startswith(("[", ".")):
        return False
    try:
        return jnp.dtype(key).name == key
    except TypeError:
        return False


def _check_groups(layout: _Layout, inner_state: Any) -> None:
    """Without params, the gradients' dtypes decide the groups: they must be the state's."""
    have = {frozenset(x) for x in _buffer_dicts(inner_state)}
    want = frozenset(layout.keys)
    if have and want not in have:
        (found, *_) = sorted(have, key=sorted)
        raise ValueError(
            f"flat_moments: the gradients' dtypes put them in the buffers {sorted(want)}, but "
            f"the state was built for {sorted(found)}: the parameters given to init have other "
            "dtypes than their gradients (float64 parameters with float32 gradients, complex "
            "parameters with real ones). Pass the parameters to update, which then groups the "
            "gradients as at init: tx.update(grads, state, params)."
        )


def _is_buffers(x: Any) -> bool:
    """A dict of flat buffers: keyed by groups (dtype names) and leaves' paths."""
    return isinstance(x, dict) and bool(x) and all(_is_buffer_key(k) for k in x)


def _buffer_dicts(inner_state: Any) -> list[dict[str, Any]]:
    """The dicts of flat buffers in ``tx``'s state: one per moment (Adam's ``mu``, ``nu``)."""
    return [x for x in jax.tree.leaves(inner_state, is_leaf=_is_buffers) if _is_buffers(x)]


def _is_array(x: Any) -> bool:
    """One array (or its ``jax.ShapeDtypeStruct``), not a node of several (8-bit moments)."""
    leaves = jax.tree.leaves(x)
    return len(leaves) == 1 and leaves[0] is x and hasattr(x, "shape")


def _check_buffer_shapes(layout: _Layout, inner_state: Any) -> None:
    """Every buffer in the state has the shape the parameters need (a function given to
    ``optax.tree_utils.tree_map_params`` reaches the buffers, and must keep their shapes)."""
    want = layout.buffer_shapes()
    for buffers in _buffer_dicts(inner_state):
        for key, value in buffers.items():
            shape = want.get(key)
            if shape is not None and _is_array(value) and tuple(value.shape) != shape:
                raise ValueError(
                    f"flat_moments: the state's buffer {key!r} has shape {tuple(value.shape)}, "
                    f"but the parameters need {shape}. If the state went through "
                    "optax.tree_utils.tree_map_params: inside flat_moments its function gets "
                    "the flat buffers (the parameters' moments, concatenated), so it may change "
                    "values and dtypes element by element (a cast such as "
                    "lambda m: m.astype(jnp.bfloat16)), never shapes."
                )


# Checkpoints store the flat buffers one per parameter, so that a checkpoint does not depend on
# how the leaves were grouped (max_leaf_size) or sharded (own buffers on Explicit meshes).


def _map_buffers(f: Any, node: FlatMomentsState, *others: FlatMomentsState) -> FlatMomentsState:
    """``node`` with ``f(buffers, *others' parts)`` in place of every dict of flat buffers;
    ``others``: states of ``node``'s structure down to those dicts."""
    return FlatMomentsState(
        jax.tree.map(
            lambda b, *o: f(b, *o) if _is_buffers(b) else b,
            node.inner_state,
            *(o.inner_state for o in others),
            is_leaf=_is_buffers,
        )
    )
