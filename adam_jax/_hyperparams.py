"""The record of an optimizer's hyperparameters, kept in its state as leaves.

An ``optax.GradientTransformation`` is a pair of closures: what ``adam(1e-2, b1=0.5)`` was built
with is invisible from outside. adam_jax's Adam and AdaMax states therefore carry a record in
their ``hyperparams`` field, a plain ``dict`` of 0-d arrays, as ``optax.inject_hyperparams``
keeps its own: ``scale_by_adam`` writes its arguments there (``b1``, ``b2``, ``eps``, the
switches) and the aliases and ``compat`` presets add theirs (``learning_rate``,
``weight_decay``, ...) with :func:`annotate`.

Values are leaves, never static tree metadata: the states of ``adam(1e-3)`` and ``adam(1e-4)``
have the same tree structure, so a jitted step does not trace again when the optimizer is
rebuilt with another learning rate, ``jax.tree.map`` works across both, and every serializer
(``flax.serialization``, equinox, orbax, pickle) handles the state as it handles optax's.

Each update writes the values of the optimizer that ran it, so the record describes the optimizer
in use, not the one that created the state. Every value is a float32 0-d array (a switch as 0 or 1).
A schedule ``learning_rate`` is stored as the rate of the latest update (before any update: of
the first), plus ``learning_rate_schedule``: its values at :data:`SCHEDULE_STEPS`, by which
checkpoints compare schedules.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any

#: A record: hyperparameter name -> float32 0-d array (a switch as 0 or 1).
Hyperparams: TypeAlias = dict[str, jax.Array]

#: The steps at which a schedule is sampled for ``learning_rate_schedule``: 0 to 9, then about
#: 12 points a decade up to 10^7 (every step a multiple of the one before by at most 1.22).
SCHEDULE_STEPS: tuple[int, ...] = tuple(
    sorted({*range(10), *(round(float(s)) for s in np.geomspace(10, 1e7, 73))})
)

INJECT_STATES = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)

# Names under which an injected value may be stored (the argument names of adam_jax's aliases and
# compat presets, and of optax's): the record's name first.
SYNONYMS = {
    "learning_rate": ("learning_rate", "lr"),
    "b1": ("b1", "beta_1"),
    "b2": ("b2", "beta_2"),
    "eps": ("eps", "epsilon"),
}


def _leaf(value: Any) -> jax.Array:
    """A value as stored: a float32 0-d array (a switch as 0 or 1), so that arithmetic over
    whole states (``jax.tree.map(jnp.add, a, b)``, optax's tree utilities) works on it."""
    return jnp.asarray(value, jnp.float32)


def schedule_samples(schedule: Any) -> np.ndarray:
    """``schedule`` at :data:`SCHEDULE_STEPS` as float32; NaN where it cannot be evaluated
    on a plain step number (such a schedule is never taken for an equal one)."""
    try:
        return np.asarray([float(schedule(t)) for t in SCHEDULE_STEPS], np.float32)
    except Exception:  # a schedule that needs a traced count or fails outside its domain
        return np.full(len(SCHEDULE_STEPS), np.nan, np.float32)


def record(**values: Any) -> Hyperparams:
    """The record of fixed ``values`` (numbers, switches); ``None`` values are left out."""
    return {name: _leaf(value) for name, value in values.items() if value is not None}


def has_record(node: Any) -> bool:
    """An adam_jax Adam/AdaMax state (a NamedTuple with a ``hyperparams`` dict)."""
    return (
        isinstance(node, tuple)
        and hasattr(node, "_replace")
        and not isinstance(node, INJECT_STATES)
        and isinstance(getattr(node, "hyperparams", None), dict)
    )


def annotate(tx: optax.GradientTransformation, **values: Any) -> optax.GradientTransformation:
    """``tx`` whose states' records also hold ``values`` (e.g. the alias's ``learning_rate``).

    ``tx`` is a rescaler such as ``scale_by_adam(...)``; the updates and the moments of its state
    are untouched. Every update rewrites ``values`` (a schedule at the step it ran), so the record
    follows the optimizer that ran.
    """

    values = {name: value for name, value in values.items() if value is not None}
    # A schedule's samples, computed once: the record gains NAME_schedule beside NAME.
    samples = {name: schedule_samples(v) for name, v in values.items() if callable(v)}

    def current(count: Any) -> Hyperparams:
        found = {n: _leaf(v(count) if callable(v) else v) for n, v in values.items()}
        return found | {n + "_schedule": jnp.asarray(s) for n, s in samples.items()}

    def add(state: PyTree, count: Any) -> PyTree:
        def one(node: Any) -> Any:
            if not has_record(node):
                return node
            return node._replace(hyperparams={**node.hyperparams, **current(count)})

        return jax.tree.map(one, state, is_leaf=has_record)

    def init_fn(params: optax.Params) -> PyTree:
        return add(tx.init(params), 0)

    def update_fn(
        updates: optax.Updates, state: PyTree, params: optax.Params | None = None
    ) -> tuple[optax.Updates, PyTree]:
        # The rate of this update: optax.scale_by_learning_rate evaluates a schedule at the count
        # before the update, which equals the rescaler's.
        count = getattr(state, "count", 0)
        updates, new_state = tx.update(updates, state, params)
        return updates, add(new_state, count)

    return optax.GradientTransformation(init_fn, update_fn)


def _walk(state: PyTree, prefix: str, injected: dict[str, Any]):
    """Yield ``(path, node, injected)`` for every state node holding a record; ``injected``: the
    hyperparameters of the enclosing ``optax.inject_hyperparams`` states, innermost winning."""

    def stop(x: Any) -> bool:
        return has_record(x) or isinstance(x, INJECT_STATES)

    for path, node in jax.tree_util.tree_flatten_with_path(state, is_leaf=stop)[0]:
        where = prefix + jax.tree_util.keystr(path)
        if isinstance(node, INJECT_STATES):
            inner = {**injected, **node.hyperparams}
            yield from _walk(node.inner_state, where + ".inner_state", inner)
        elif has_record(node):
            yield where, node, injected


def injected_value(name: str, injected: dict[str, Any]) -> Any:
    """The array stored for ``name`` (or a synonym, e.g. ``lr``) by ``inject_hyperparams``."""
    for key in SYNONYMS.get(name, (name,)):
        if key in injected:
            return injected[key]
    return None


def records(opt_state: PyTree) -> list[tuple[str, Any, Hyperparams, dict[str, Any]]]:
    """Every ``(path, node, record, injected)`` in ``opt_state``; ``path`` such as ``[0]``."""
    return [(path, node, node.hyperparams, inj) for path, node, inj in _walk(opt_state, "", {})]


def resolve(found: Hyperparams, injected: dict[str, Any]) -> dict[str, Any]:
    """The record as a dict, a value injected with ``optax.inject_hyperparams`` replaced by the
    array its state holds now (it may have been changed since the last update)."""
    resolved = {}
    for name, value in found.items():
        live = injected_value(name, injected)
        resolved[name] = value if live is None or callable(live) else live
    return resolved


def all_injected(opt_state: PyTree) -> dict[str, Any]:
    """Every injected hyperparameter in ``opt_state``, under the record's names where a synonym
    is used (``lr`` -> ``learning_rate``); for transformations without a record (optax's)."""
    found: dict[str, Any] = {}
    is_inject = lambda x: isinstance(x, INJECT_STATES)
    for state in jax.tree.leaves(opt_state, is_leaf=is_inject):
        if is_inject(state):
            found.update(state.hyperparams)
    for name, keys in SYNONYMS.items():
        for key in keys:
            if name not in found and key in found:
                found[name] = found[key]
    return found


def as_number(value: Any) -> Any:
    """A concrete 0-d value as the Python float it was written as; samples and tracers as is.

    Stored values are float32, so ``0.999`` is kept as 0.99900001...; the shortest decimal that
    rounds to the stored float32 (numpy's repr) gives back the ``0.999`` the optimizer computes
    with, to the precision of its float64 bias corrections.
    """
    if not isinstance(value, (jax.Array, np.ndarray, np.generic, float, int)):
        return value  # a ShapeDtypeStruct (eval_shape)
    if isinstance(value, jax.core.Tracer) or np.ndim(value) != 0:
        return value
    return float(str(np.float32(np.asarray(value))))


def hyperparams(opt_state: PyTree) -> dict[str, Any]:
    """The hyperparameters of the one Adam or AdaMax inside ``opt_state``, as a dict.

    Values are Python floats (stored as float32 and read back as the shortest decimal that
    rounds to it: ``0.999``, not 0.99900001; a switch such as ``amsgrad`` is 0.0 or 1.0);
    under ``jit`` they are the traced arrays. A schedule ``learning_rate`` is given as the rate of the
    latest update (before any: of the first), and ``learning_rate_schedule`` holds its values at
    :data:`SCHEDULE_STEPS`. A value injected with ``optax.inject_hyperparams`` is the array its
    state holds now. Works on ``jax.eval_shape`` output (then every value is a
    ``ShapeDtypeStruct``).

    Raises:
      ValueError: ``opt_state`` holds no record (e.g. optax's own ``adam``) or more than one.
    """
    found = records(opt_state)
    if len(found) != 1:
        raise ValueError(
            f"hyperparams: expected exactly one adam_jax Adam/AdaMax state with a hyperparameter "
            f"record in the optimizer state, found {len(found)}."
        )
    _, _, values, injected = found[0]
    return {name: as_number(value) for name, value in resolve(values, injected).items()}
