"""Shardings of optimizer state, derived from the shardings of the parameters.

Every moment buffer of an adam_jax transformation is created by ``_tree.zeros_like`` with the
sharding of its parameter, so ``jax.jit(tx.init)(params)`` already returns state sharded like the
model. :func:`state_sharding` states that layout ahead of time, without running ``init``: for
``jax.jit(..., out_shardings=...)`` and for restoring a checkpoint onto a mesh.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

from adam_jax import state_nodes

PyTree = Any


def _param_shardings(params: PyTree) -> PyTree:
    """The ``.sharding`` of every leaf of ``params``; ``ValueError`` naming a leaf without one."""

    def one(path: tuple, leaf: Any) -> Sharding:
        sharding = getattr(leaf, "sharding", None)
        if not isinstance(sharding, Sharding):
            raise ValueError(
                f"state_sharding: parameter leaf {jax.tree_util.keystr(path)} "
                f"({type(leaf).__name__}) has no sharding; pass jax.Arrays placed with "
                "jax.device_put, or jax.ShapeDtypeStruct(shape, dtype, sharding=...)."
            )
        return sharding

    return jax.tree_util.tree_map_with_path(one, params)


def _replicated(shardings: list[Sharding]) -> Sharding:
    """Replicated layout on the parameters' devices, for state that is not a copy of the params."""
    meshes = {s.mesh for s in shardings if isinstance(s, NamedSharding)}
    if len(meshes) == 1 and all(isinstance(s, NamedSharding) for s in shardings):
        return NamedSharding(meshes.pop(), PartitionSpec())
    devices = {d for s in shardings for d in s.device_set}
    if len(devices) == 1 and not meshes:
        return SingleDeviceSharding(devices.pop())
    raise ValueError(
        "state_sharding: the parameters must all be NamedSharding on one mesh or all on one "
        f"device; got {sorted({repr(s) for s in shardings})[:3]}."
    )


def state_sharding(tx: optax.GradientTransformation, params: PyTree) -> PyTree:
    """The sharding of each leaf of ``tx.init(params)``, computed without allocating state.

    Leaves of the state that hold a copy of the parameter tree (moments ``mu``, ``nu``,
    ``nu_max``, in any ``mu_dtype``/``nu_dtype``) get the sharding of the matching parameter;
    8-bit moments (:func:`adam_jax.quantized_moments`) too, for their codes, and their per-block
    scales keep the parameter's leading axes' partitioning; leaves masked out by ``optax.masked``
    or ``optax.partition`` stay masked;
    every other leaf (step counts, schedule state, injected hyperparameters) is replicated on the
    parameters' mesh (or put on their single device). Found with
    ``optax.tree_utils.tree_map_params``, so it works for any optax chain. Under
    :func:`adam_jax.flat_moments`, a buffer of several leaves is replicated and a leaf's own
    buffer (an ``Explicit``-sharded leaf) has the leaf's sharding.

    Args:
      tx: the optimizer, e.g. ``adam_jax.adam(1e-3)``.
      params: the parameters, as ``jax.Array`` leaves or ``jax.ShapeDtypeStruct`` leaves with a
        ``sharding``.

    Returns:
      A pytree of ``jax.sharding.Sharding`` with the structure of ``tx.init(params)``: use it as
      ``jax.jit(tx.init, out_shardings=...)`` or to build the abstract target of a restore.
    """
    shardings = _param_shardings(params)
    replicated = _replicated(jax.tree.leaves(shardings))
    abstract = jax.tree.map(  # with shardings: flat_moments keeps Explicit-sharded leaves apart
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings
    )
    abstract_state = jax.eval_shape(tx.init, abstract)
    result = optax.tree_utils.tree_map_params(
        state_nodes.opaque_init(tx),  # regrouped states (flat_moments) are laid out below
        lambda node, sharding: state_nodes.place_like_param(node, sharding, replicated),
        abstract_state,
        shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=state_nodes.stands_for_one_param,
    )
    by_path = {
        jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_leaves_with_path(shardings)
    }
    return state_nodes.place_regrouped(
        result,
        abstract_state,
        lambda node: node.place(
            own=lambda path, x: state_nodes.place_like_param(
                x, by_path.get(path, replicated), replicated
            ),
            group=lambda x: state_nodes.place_like_param(x, replicated, replicated),
            other=replicated,
        ),
    )
