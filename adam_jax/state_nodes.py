"""How a wrapper tells the state tools about optimizer state that is not laid out like the params.

The tools that place, read or store optimizer state (:func:`adam_jax.state_sharding`,
:func:`adam_jax.partitioned`, :func:`adam_jax.monitor`, the checkpoints) see the state as optax
does (``optax.tree_utils.tree_map_params``): a leaf that mirrors a parameter is treated as that
parameter, everything else (step counts, hyperparameters) as shared. Two kinds of wrapper state
do not fit that picture. Each declares itself by subclassing (or registering with) one of the
two classes below, and the tools ask it, never its internals:

- :class:`ParamNode`: a node standing where one parameter leaf stands, made of several arrays,
  e.g. an 8-bit moment of :func:`adam_jax.quantized_moments` (codes shaped like the parameter
  and one scale per block). The tools stop at it, as at ``optax.MaskedNode``.
- :class:`Regrouped`: the state of a wrapper whose inner optimizer keeps its moments in a
  grouping of its own, e.g. :func:`adam_jax.flat_moments` (one buffer per dtype, and one per
  large leaf). The tools treat it as one opaque node and ask it to lay itself out.

A new wrapper with such state implements one of them, and every tool handles it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import jax
import optax
from jax.sharding import Sharding

PyTree = Any


class ParamNode(abc.ABC):
    """A state node that stands for one parameter leaf but holds several arrays.

    It must be a pytree node (e.g. a dataclass registered with
    ``jax.tree_util.register_dataclass``) whose ``shape`` is the parameter's.
    """

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """The shape of the parameter this node stands for."""

    @abc.abstractmethod
    def place(self, layout: Sharding, replicated: Sharding) -> ParamNode:
        """This node with a ``Sharding`` in place of each array, for a parameter laid out as
        ``layout``; ``replicated`` is the shared layout on the same devices."""

    @abc.abstractmethod
    def splits_along(self, spec: tuple, mesh_shape: Any, dim: int) -> bool:
        """Whether this node's arrays can be split as a parameter of partition spec ``spec``
        (one entry per axis, on a mesh of axis sizes ``mesh_shape``), whose dimension ``dim``
        just got split: no piece of the node may straddle two devices."""

    @abc.abstractmethod
    def value(self) -> jax.Array:
        """The node's value as one array in the parameter's shape (what monitoring reads)."""


class Regrouped(abc.ABC):
    """The state of a wrapper whose inner moments are grouped otherwise than the parameters.

    It must be a pytree node. The tools never look inside; they call these methods.
    """

    @abc.abstractmethod
    def place(
        self,
        own: Callable[[str, Any], Any],
        group: Callable[[Any], Any],
        other: Sharding,
    ) -> Regrouped:
        """This state with shardings for leaves: ``own(path, node)`` for a buffer holding the
        state of just the parameter at ``path`` (a ``jax.tree_util.keystr``), ``group(node)``
        for a buffer holding several parameters' state, ``other`` for everything else."""

    @abc.abstractmethod
    def own_paths(self) -> frozenset[str]:
        """The paths of the parameters whose state has buffers of their own."""

    @abc.abstractmethod
    def per_parameter(self, params: PyTree) -> Regrouped:
        """This state with its buffers stored one per parameter (as checkpoints store it), so a
        checkpoint does not depend on the grouping."""

    @abc.abstractmethod
    def from_per_parameter(self, stored: Regrouped, params: PyTree, shardings: Any) -> Regrouped:
        """``stored`` (a :meth:`per_parameter` state) regrouped into this state's layout, its
        buffers put on ``shardings`` (this state's)."""


def is_regrouped(x: Any) -> bool:
    return isinstance(x, Regrouped)


def stands_for_one_param(x: Any) -> bool:
    """A state node that sits where a parameter leaf sits: a :class:`ParamNode`, or optax's
    ``MaskedNode`` (a parameter that ``optax.masked`` or ``optax.partition`` leaves out)."""
    return isinstance(x, (ParamNode, optax.MaskedNode))


def place_like_param(node: Any, layout: Sharding, replicated: Sharding) -> Any:
    """The sharding(s) of the state ``node`` that stands for a parameter laid out as ``layout``."""
    if isinstance(node, optax.MaskedNode):
        return node
    if isinstance(node, ParamNode):
        return node.place(layout, replicated)
    return layout


def opaque_init(tx: optax.GradientTransformation) -> Callable[[PyTree], PyTree]:
    """``tx.init`` for ``optax.tree_utils.tree_map_params`` with extra trees shaped like the
    parameters (their shardings, say): each :class:`Regrouped` state of the probe's answer is one
    opaque leaf, which ``tree_map_params`` hands to ``transform_non_params``; the caller then
    lays it out with :meth:`Regrouped.place`."""
    opaque = "a Regrouped state: not laid out like the parameters"
    return lambda params: jax.tree.map(
        lambda x: opaque if is_regrouped(x) else x, tx.init(params), is_leaf=is_regrouped
    )


def place_regrouped(result: PyTree, abstract_state: PyTree, place: Callable) -> PyTree:
    """``result`` (shardings from ``tree_map_params`` over :func:`opaque_init`) with
    ``place(node)`` where ``abstract_state`` has a :class:`Regrouped` node."""
    return jax.tree.map(
        lambda out, node: place(node) if is_regrouped(node) else out,
        result,
        abstract_state,
        is_leaf=lambda x: is_regrouped(x) or isinstance(x, Sharding),
    )


def per_parameter(state: PyTree, params: PyTree) -> PyTree:
    """``state`` with every :class:`Regrouped` node stored one buffer per parameter."""
    return jax.tree.map(
        lambda x: x.per_parameter(params) if is_regrouped(x) else x, state, is_leaf=is_regrouped
    )


def from_per_parameter(stored: PyTree, target: PyTree, params: PyTree, shardings: PyTree) -> PyTree:
    """The inverse of :func:`per_parameter` into the layout of ``target`` (the state to restore,
    e.g. ``jax.eval_shape(tx.init, params)``), on ``shardings`` (the state's)."""
    return jax.tree.map(
        lambda s, t, sh: t.from_per_parameter(s, params, sh) if is_regrouped(t) else s,
        stored,
        target,
        shardings,
        is_leaf=is_regrouped,
    )


def values(tree: PyTree) -> PyTree:
    """``tree`` with every :class:`ParamNode` replaced by its value (one array)."""
    is_node = lambda x: isinstance(x, ParamNode)
    return jax.tree.map(lambda x: x.value() if is_node(x) else x, tree, is_leaf=is_node)
