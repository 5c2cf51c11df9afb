"""The record of an optimizer's hyperparameters, kept in its state.

An ``optax.GradientTransformation`` is a pair of closures: what ``adam(1e-2, b1=0.5)`` was built
with is invisible from outside. adam_jax's Adam and AdaMax states therefore carry a
:class:`Hyperparams` record in their ``hyperparams`` field: ``scale_by_adam`` writes its own
arguments there (``b1``, ``b2``, ``eps``, the switches, the moment dtypes) and the aliases and
``compat`` presets add theirs (``learning_rate``, ``weight_decay``, the preset's name) with
:func:`annotate`.

The record is static pytree metadata: it has no leaves, so it costs nothing on the device, and it
travels with the state through ``optax.chain``, ``optax.masked``, ``jit``, ``jax.eval_shape`` and
any wrapper whose state holds the inner state. Its values are part of the state's tree structure,
as ``amsgrad``'s ``nu_max`` is: states of two differently configured optimizers have different
structures.

A value given as a JAX array (as ``optax.inject_hyperparams`` gives every number) is recorded as
:data:`INJECTED`, never by value, so the structure does not change when the value does (no
recompilation). :func:`resolve` replaces it with the array the enclosing
``optax.inject_hyperparams`` state holds, read when the step runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adam_jax import _validate

PyTree = Any

_INJECT_STATES = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)

# Names under which an injected value may be stored (the argument names of adam_jax's aliases and
# compat presets, and of optax's): the record's name first.
SYNONYMS = {
    "learning_rate": ("learning_rate", "lr"),
    "b1": ("b1", "beta_1"),
    "b2": ("b2", "beta_2"),
    "eps": ("eps", "epsilon"),
}


class _Injected:
    """Marks a value held as an array in an ``optax.inject_hyperparams`` state."""

    def __repr__(self) -> str:
        return "INJECTED"

    def __reduce__(self) -> str:
        return "INJECTED"


INJECTED = _Injected()


def _as_recorded(value: Any) -> Any:
    """The value as recorded: a Python number, bool, string or None; a schedule (callable) as is;
    ``INJECTED`` for a JAX array, whose value may change without the structure changing."""
    if value is None or value is INJECTED or isinstance(value, (bool, str)) or callable(value):
        return value
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        return INJECTED
    if _validate.is_concrete_number(value):
        return int(value) if jnp.issubdtype(jnp.result_type(value), jnp.integer) else float(value)
    return repr(value)  # anything else (static, hashable) by its description


@jax.tree_util.register_pytree_node_class
class Hyperparams:
    """A read-only mapping of hyperparameter names to the values an optimizer was built with.

    A pytree node with no children: the values are static metadata (compared, hashed and shown
    with the state's tree structure). Read it with ``record["b1"]``, ``dict(record)`` or
    :func:`adam_jax.hyperparams`.
    """

    __slots__ = ("_items",)

    def __init__(self, **values: Any):
        self._items = tuple((name, _as_recorded(value)) for name, value in values.items())

    def replace(self, **values: Any) -> Hyperparams:
        """A copy with ``values`` added or replaced."""
        return Hyperparams(**{**dict(self._items), **values})

    def __getitem__(self, name: str) -> Any:
        return dict(self._items)[name]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self):
        return dict(self._items).keys()

    def items(self):
        return dict(self._items).items()

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self._items).get(name, default)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hyperparams) and self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return "Hyperparams(" + ", ".join(f"{k}={v!r}" for k, v in self._items) + ")"

    def tree_flatten(self) -> tuple[tuple, tuple]:
        return (), self._items

    @classmethod
    def tree_unflatten(cls, items: tuple, children: tuple) -> Hyperparams:
        del children
        record = object.__new__(cls)
        record._items = items
        return record


def _has_record(node: Any) -> bool:
    return isinstance(getattr(node, "hyperparams", None), Hyperparams) and hasattr(node, "_replace")


def annotate(tx: optax.GradientTransformation, **values: Any) -> optax.GradientTransformation:
    """``tx`` whose states' records also hold ``values`` (e.g. the alias's ``learning_rate``).

    ``tx`` is a rescaler such as ``scale_by_adam(...)``; the updates and the arrays of its state
    are untouched.
    """

    def add(state: PyTree) -> PyTree:
        def one(node: Any) -> Any:
            return (
                node._replace(hyperparams=node.hyperparams.replace(**values))
                if _has_record(node)
                else node
            )

        return jax.tree.map(one, state, is_leaf=_has_record)

    def init_fn(params: optax.Params) -> PyTree:
        return add(tx.init(params))

    def update_fn(
        updates: optax.Updates, state: PyTree, params: optax.Params | None = None
    ) -> tuple[optax.Updates, PyTree]:
        # The state's record already holds the values (added at init) and update passes it on
        # unchanged: rebuilding it here from this instance would change the state's tree
        # structure whenever the optimizer is rebuilt (a schedule is a new function each time).
        return tx.update(updates, state, params)

    return optax.GradientTransformation(init_fn, update_fn)


def _walk(state: PyTree, prefix: str, injected: dict[str, Any]):
    """Yield ``(path, node, injected)`` for every state node holding a record; ``injected``: the
    hyperparameters of the enclosing ``optax.inject_hyperparams`` states, innermost winning."""

    def stop(x: Any) -> bool:
        return _has_record(x) or isinstance(x, _INJECT_STATES)

    for path, node in jax.tree_util.tree_flatten_with_path(state, is_leaf=stop)[0]:
        where = prefix + jax.tree_util.keystr(path)
        if isinstance(node, _INJECT_STATES):
            inner = {**injected, **node.hyperparams}
            yield from _walk(node.inner_state, where + ".inner_state", inner)
        elif _has_record(node):
            yield where, node, injected


def injected_value(name: str, injected: dict[str, Any]) -> Any:
    """The array stored for ``name`` (or a synonym, e.g. ``lr``) by ``inject_hyperparams``."""
    for key in SYNONYMS.get(name, (name,)):
        if key in injected:
            return injected[key]
    return INJECTED


def records(opt_state: PyTree) -> list[tuple[str, Any, Hyperparams, dict[str, Any]]]:
    """Every ``(path, node, record, injected)`` in ``opt_state``; ``path`` such as ``[0]``."""
    return [(path, node, node.hyperparams, inj) for path, node, inj in _walk(opt_state, "", {})]


def resolve(record: Hyperparams, injected: dict[str, Any]) -> dict[str, Any]:
    """The record as a dict, each ``INJECTED`` value replaced by its array where one is found."""
    return {
        name: injected_value(name, injected) if value is INJECTED else value
        for name, value in record.items()
    }


def all_injected(opt_state: PyTree) -> dict[str, Any]:
    """Every injected hyperparameter in ``opt_state``, under the record's names where a synonym
    is used (``lr`` -> ``learning_rate``); for transformations without a record (optax's)."""
    found: dict[str, Any] = {}
    is_inject = lambda x: isinstance(x, _INJECT_STATES)
    for state in jax.tree.leaves(opt_state, is_leaf=is_inject):
        if is_inject(state):
            found.update(state.hyperparams)
    for name, keys in SYNONYMS.items():
        for key in keys:
            if name not in found and key in found:
                found[name] = found[key]
    return found


def hyperparams(opt_state: PyTree) -> dict[str, Any]:
    """The hyperparameters of the one Adam or AdaMax inside ``opt_state``, as a dict.

    Numbers, switches and dtype names are Python values; a schedule is returned as the callable;
    a value injected with ``optax.inject_hyperparams`` is returned as the array its state holds
    now (a tracer under ``jit``), so it is read at run time. Works on ``jax.eval_shape`` output.

    Raises:
      ValueError: ``opt_state`` holds no record (e.g. optax's own ``adam``) or more than one.
    """
    found = records(opt_state)
    if len(found) != 1:
        raise ValueError(
            f"hyperparams: expected exactly one adam_jax Adam/AdaMax state with a hyperparameter "
            f"record in the optimizer state, found {len(found)}."
        )
    _, _, record, injected = found[0]
    return resolve(record, injected)


def describe(value: Any, schedule_steps: tuple[int, ...] = (0, 1, 10, 100, 1000, 10000)) -> Any:
    """A JSON-able stand-in for a recorded value: schedules by their values at a few steps."""
    if value is INJECTED:
        return "injected"
    if callable(value):
        try:
            samples = {str(t): float(value(t)) for t in schedule_steps}
        except Exception:  # a schedule that cannot run on plain ints
            return "schedule"
        return {"schedule at steps": samples}
    return value


def is_record(x: Any) -> bool:
    return isinstance(x, Hyperparams)
