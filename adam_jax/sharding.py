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
    every other leaf (step counts, schedule state, injected hyperparameters) is replicated on the
    parameters' mesh (or put on their single device). Found with
    ``optax.tree_utils.tree_map_params``, so it works for any optax chain.

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
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    abstract_state = jax.eval_shape(tx.init, abstract)
    return optax.tree_utils.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        abstract_state,
        shardings,
        transform_non_params=lambda _: replicated,
    )
