"""Switch from optax's Adam to adam_jax mid-training: convert an optax optimizer state.

:func:`from_optax_state` builds the state ``tx.init(params)`` of an adam_jax optimizer and writes
into it what the optax state knows: the step count ``t`` and the moments ``m_t``, ``v_t`` (or
AdaMax's ``u_t``, AMSGrad's running maximum), plus the counters of learning-rate schedules and
the values of ``optax.inject_hyperparams``. It reads the optax state by its types only
(``optax.ScaleByAdamState``, ``optax.ScaleByAmsgradState``, ...), wherever they sit (chains,
``optax.masked``, ``optax.inject_hyperparams``), and writes adam_jax's states by their fields
``count``, ``mu``, ``nu``, ``nu_max`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax import _tree, flat, quantize, transforms

PyTree = Any

# optax's Adam-family states: optax.adam/adamw/nadam/adamax use ScaleByAdamState (for adamax ``nu``
# is the infinity norm u_t), optax.amsgrad ScaleByAmsgradState.
_OPTAX_ADAM = (optax.ScaleByAdamState, optax.ScaleByAmsgradState)
_ADAM_JAX = (transforms.ScaleByAdamState, transforms.ScaleByAdamaxState)
_INJECT = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)
# Step counters of learning-rate schedules: optax.scale_by_learning_rate(schedule) keeps a
# ScaleByScheduleState, optax.inject_hyperparams a WrappedScheduleState per scheduled value.
try:  # optax does not export the class; without it, only ScaleByScheduleState counters carry
    from optax.schedules._inject import WrappedScheduleState as _WrappedScheduleState
except ImportError:  # pragma: no cover - another optax layout
    _SCHEDULE: tuple[type, ...] = (optax.ScaleByScheduleState,)
else:
    _SCHEDULE = (optax.ScaleByScheduleState, _WrappedScheduleState)

_NAME = "from_optax_state"


def from_optax_state(
    optax_state: optax.OptState, tx: optax.GradientTransformation, params: optax.Params
) -> optax.OptState:
    r"""The state of adam_jax optimizer ``tx`` that continues the run of ``optax_state``.

    For a run trained with optax and continued with adam_jax::

        opt_state = adam_jax.from_optax_state(optax_state, adam_jax.adam(1e-3), params)
        updates, opt_state = adam_jax.adam(1e-3).update(grads, opt_state, params)

    Which adam_jax optimizer continues which optax optimizer *exactly* (same updates, to
    rounding), given the same hyperparameters:

    - ``optax.adam(lr, b1, b2, eps, eps_root=r)``: ``adam_jax.adam(lr, b1, b2, eps, eps_root=r)``
    - ``optax.adamw(lr, b1, b2, eps, eps_root=r, weight_decay=wd, mask=mk)``:
      ``adam_jax.adamw(lr, b1, b2, eps, wd, eps_root=r, mask=mk)``
    - ``optax.nadam(...)``, i.e. ``optax.adam(..., nesterov=True)``:
      ``adam_jax.adam(..., nesterov=True)``
    - ``optax.amsgrad(...)``: ``adam_jax.adam(..., amsgrad=True)``
    - ``optax.adamax(lr, b1, b2, eps)``: ``adam_jax.compat.torch_adamax(lr, (b1, b2), eps)``

    Both Adams divide by ``sqrt(v_hat + eps_root) + eps`` (Algorithm 1's form); use the default
    ``eps_hat=False``. optax.adamax puts ``eps`` inside the maximum, ``u_t = max(b2 u, |g| + eps)``,
    as ``torch_adamax`` does; ``adam_jax.adamax`` (``eps`` added to ``u_t``, default 0) continues
    it only approximately. ``compat.torch_adam(amsgrad=True)`` keeps the maximum of the *raw*
    ``v_t``, not of ``v_hat`` as optax.amsgrad: converted, it continues only approximately. The
    moments alone cannot tell an Adam run from an AdaMax run: choose ``tx`` to match.

    ``tx`` may wrap its Adam/AdaMax in ``optax.chain`` (clipping, masks), ``optax.masked``,
    ``optax.inject_hyperparams``, :func:`adam_jax.monitor`, :func:`adam_jax.flat_moments` and
    :func:`adam_jax.quantized_moments` (its moments are encoded in 8 bits, rounded to nearest:
    the continuation is then as close as 8-bit storage allows).

    What is carried over, and what starts afresh:

    - Adam/AdaMax states, paired in tree order (so ``tx`` must hold as many as ``optax_state``):
      ``count`` and ``mu``, ``nu`` (and ``nu_max`` from ``optax.ScaleByAmsgradState``), cast to
      the dtypes of ``tx``'s state (saturating), placed like ``tx.init(params)``'s leaves.
    - Schedule counters (``optax.scale_by_learning_rate(schedule)``'s ``ScaleByScheduleState``,
      the ``WrappedScheduleState`` of ``inject_hyperparams``): copied when both states hold the
      same kinds in the same order; otherwise every counter of ``tx`` is set to the Adam step
      count ``t``, so that a schedule of ``tx`` continues at step ``t`` rather than restarting.
    - ``optax.inject_hyperparams`` states: paired in order when both hold the same number: the
      ``count`` and every value in ``hyperparams`` under a name both have (e.g. a learning rate
      the user changed in the optax state); names only ``tx`` has keep ``tx``'s values.
      Unpaired, ``count`` is set to ``t`` and the values are ``tx``'s.
    - Everything else keeps ``tx.init(params)``: clipping and masks (stateless), the statistics of
      :func:`adam_jax.monitor`, :func:`adam_jax.kahan_summation`'s compensation,
      :func:`adam_jax.temporal_averaging`'s average, and the hyperparameter record of adam_jax's
      states (it describes ``tx``).

    Works under ``jax.jit`` too (e.g. to place the state with ``out_shardings``); eagerly, each
    moment is placed as the leaf of ``tx.init(params)`` it replaces.

    Args:
      optax_state: the state of an optax Adam-family optimizer, as its ``init``/``update``
        returned it, or restored from a checkpoint *with* its structure (e.g.
        ``StandardCheckpointer().restore(path, jax.eval_shape(optax_tx.init, params))``).
      tx: the adam_jax optimizer to continue with, e.g. ``adam_jax.adam(1e-3)``.
      params: the current parameters (their tree, shapes and dtypes build ``tx``'s state).

    Returns:
      ``tx.init(params)`` with the optax run's step count, moments and counters written in.

    Raises:
      ValueError: no Adam-family state on one side, or a different number on the two sides; a
        moment tree or leaf shape that does not match ``params``; AMSGrad on one side only.
      TypeError: ``tx`` is not a gradient transformation.
    """
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(
            f"{_NAME}: tx must be an optax.GradientTransformation, e.g. adam_jax.adam(1e-3); got "
            f"{type(tx).__name__} {tx!r:.60}."
        )
    target = tx.init(params)
    sources = _find(optax_state, _OPTAX_ADAM)
    targets = _find(target, _ADAM_JAX)
    _check_counts(optax_state, sources, targets)
    pairs = iter(sources)

    def adam_node(path: str, node: Any, in_flat: bool) -> Any:
        src_path, src = next(pairs)
        return _convert_adam(src_path, src, path, node, params if in_flat else None)

    converted = _rebuild(target, adam_node)
    step = _common_step([src.count for _, src in sources])
    converted = _carry_schedules(optax_state, converted, step)
    return _carry_injected(optax_state, converted, step)


def _common_step(counts: list[Any]) -> jax.Array | None:
    """The step count of the optax Adam states when they agree (the one count when there is one,
    also under ``jit``); ``None`` when they differ or cannot be compared while tracing."""
    if len(counts) == 1:
        return jnp.asarray(counts[0])
    if any(isinstance(c, jax.core.Tracer) for c in counts):
        return None
    values = {int(np.asarray(c)) for c in counts}
    return jnp.asarray(counts[0]) if len(values) == 1 else None


# --- walking states -----------------------------------------------------------------------------


def _children(tree: PyTree) -> tuple[list[tuple[Any, Any]], Any] | None:
    """The immediate children of a pytree node with their keys and the node's one-level treedef,
    or ``None`` for a leaf."""
    flat_children, treedef = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: x is not tree
    )
    if jax.tree_util.treedef_is_leaf(treedef):
        return None
    return [(path[0], child) for path, child in flat_children], treedef


def _rebuild(tree: PyTree, visit: Callable[[str, Any, bool], Any], types=_ADAM_JAX) -> PyTree:
    """``tree`` with every node of ``types`` replaced by ``visit(path, node, in_flat)``, in
    pre-order; ``in_flat``: the node lies inside a :class:`adam_jax.FlatMomentsState`."""

    def go(node: Any, path: str, in_flat: bool) -> Any:
        if isinstance(node, types):
            return visit(path, node, in_flat)
        found = _children(node)
        if found is None:
            return node
        children, treedef = found
        in_flat = in_flat or isinstance(node, flat.FlatMomentsState)
        return treedef.unflatten(
            [go(c, path + jax.tree_util.keystr((k,)), in_flat) for k, c in children]
        )

    return go(tree, "", False)


def _find(tree: PyTree, types: tuple[type, ...]) -> list[tuple[str, Any]]:
    """``(path, node)`` for every node of ``types`` in ``tree``, in pre-order (nested ones too)."""
    found: list[tuple[str, Any]] = []

    def go(node: Any, path: str) -> None:
        if isinstance(node, types):
            found.append((path or "(top)", node))
        children = _children(node)
        for key, child in [] if children is None else children[0]:
            go(child, path + jax.tree_util.keystr((key,)))

    go(tree, "")
    return found


def _check_counts(optax_state: PyTree, sources: list, targets: list) -> None:
    src_paths = ", ".join(p for p, _ in sources)
    tgt_paths = ", ".join(p for p, _ in targets)
    if not sources:
        hint = ""
        if _looks_restored_without_target(optax_state):
            hint = (
                " It holds plain dicts with 'count', 'mu' and 'nu': a checkpoint restored without "
                "its structure. Restore it with the structure of the optax state, e.g. "
                "`ocp.StandardCheckpointer().restore(path, jax.eval_shape(optax_tx.init, params))`."
            )
        raise ValueError(
            f"{_NAME}: optax_state holds no optax.ScaleByAdamState or optax.ScaleByAmsgradState "
            "(the states of optax.adam, adamw, nadam, adamax and amsgrad)." + hint
        )
    if not targets:
        raise ValueError(
            f"{_NAME}: tx.init(params) holds no adam_jax ScaleByAdamState/ScaleByAdamaxState; tx "
            "must contain adam_jax's Adam or AdaMax, e.g. adam_jax.adam(1e-3) or "
            "optax.chain(optax.clip_by_global_norm(1.0), adam_jax.adam(1e-3))."
        )
    if len(sources) != len(targets):
        raise ValueError(
            f"{_NAME}: optax_state holds {len(sources)} Adam states (at {src_paths}), tx holds "
            f"{len(targets)} (at {tgt_paths}); they are paired in order, so tx needs one Adam/"
            "AdaMax per Adam of the optax optimizer (e.g. the same optax.partition labels)."
        )


def _looks_restored_without_target(tree: PyTree) -> bool:
    found = False

    def go(node: Any) -> None:
        nonlocal found
        if isinstance(node, dict) and {"count", "mu", "nu"} <= set(node):
            found = True
        children = _children(node)
        for _, child in [] if children is None else children[0]:
            go(child)

    go(tree)
    return found


# --- moments ------------------------------------------------------------------------------------


def _convert_adam(src_path: str, src: Any, path: str, node: Any, flat_params: Any) -> Any:
    """``node`` (adam_jax) with the count and moments of ``src`` (optax); ``flat_params``: the
    parameters when ``node`` lies inside ``flat_moments``, else ``None``."""
    where = f"the optax state at {src_path} -> tx's state at {path or '(top)'}"
    src_amsgrad = isinstance(src, optax.ScaleByAmsgradState)
    tgt_amsgrad = getattr(node, "nu_max", None) is not None
    if src_amsgrad and not tgt_amsgrad:
        raise ValueError(
            f"{_NAME}: {where}: the optax state is AMSGrad (optax.ScaleByAmsgradState) but tx's "
            f"{type(node).__name__} is not; continue with adam_jax.adam(..., amsgrad=True)."
        )
    if tgt_amsgrad and not src_amsgrad:
        raise ValueError(
            f"{_NAME}: {where}: tx runs AMSGrad (its ScaleByAdamState has nu_max) but the optax "
            "state has no running maximum (optax.ScaleByAdamState, not ScaleByAmsgradState); "
            "continue with amsgrad=False, or convert a state of optax.amsgrad."
        )
    count = jnp.asarray(src.count)
    if count.shape != ():
        raise ValueError(
            f"{_NAME}: {where}: count has shape {count.shape}; a step count is a scalar."
        )
    changes = {"count": _tree.cast_like(count, node.count)}
    fields = ("mu", "nu", "nu_max") if tgt_amsgrad else ("mu", "nu")
    for field in fields:
        changes[field] = _moment(
            getattr(src, field), getattr(node, field), flat_params, f"{where}, .{field}"
        )
    return node._replace(**changes)


def _is_quantized(x: Any) -> bool:
    return isinstance(x, quantize.QuantizedMoment)


def _moment(src: PyTree, tgt: PyTree, flat_params: Any, where: str) -> PyTree:
    """The moment tree ``src`` (laid out like the parameters) in the layout, dtypes and storage
    of ``tgt``: flattened as ``flat_moments`` does, 8-bit encoded as ``quantized_moments``."""
    if flat_params is not None:
        src = _flattened(src, tgt, flat_params, where)
    src_leaves, src_def = jax.tree_util.tree_flatten_with_path(src)
    tgt_leaves, tgt_def = jax.tree_util.tree_flatten_with_path(tgt, is_leaf=_is_quantized)
    if src_def != tgt_def:
        src_keys = [jax.tree_util.keystr(p) for p, _ in src_leaves]
        tgt_keys = [jax.tree_util.keystr(p) for p, _ in tgt_leaves]
        only_src = [k for k in src_keys if k not in tgt_keys]
        only_tgt = [k for k in tgt_keys if k not in src_keys]
        detail = (
            f"leaves only in the optax state: {only_src[:5]}, only in tx's: {only_tgt[:5]}"
            if only_src or only_tgt
            else f"optax: {src_def}, tx: {tgt_def}"
        )
        raise ValueError(
            f"{_NAME}: {where}: the moment trees differ ({detail}). Pass the params the optax "
            "state was built for, and build tx with the same masks and partitions."
        )
    out = []
    for (path, s), (_, t) in zip(src_leaves, tgt_leaves, strict=True):
        t_shape = tuple(t.codes.shape if _is_quantized(t) else jnp.shape(t))
        if tuple(jnp.shape(s)) != t_shape:
            raise ValueError(
                f"{_NAME}: {where}{jax.tree_util.keystr(path)} has shape {tuple(jnp.shape(s))} in "
                f"optax_state but {t_shape} in tx.init(params); pass the params the optax state "
                "was built for."
            )
        out.append(_encoded(jnp.asarray(s), t))
    return jax.tree.unflatten(tgt_def, out)


# One compiled encoder per shape and format (op by op, a conversion dispatches every op anew).
_quantize = jax.jit(quantize.quantize, static_argnames=("block_size", "signed", "exponent_bits"))


def _encoded(x: jax.Array, like: Any) -> Any:
    """``x`` stored as ``like`` is: 8-bit codes (rounded to nearest) or an array of its dtype,
    placed as ``like`` (concrete arrays only)."""
    if _is_quantized(like):
        return _quantize(
            x.astype(like.dtype),
            block_size=like.block_size,
            signed=jnp.dtype(like.codes.dtype) == jnp.int8,
            exponent_bits=like.exponent_bits,
        )
    out = _tree.cast_like(x, like)
    if isinstance(like, jax.Array) and not isinstance(like, jax.core.Tracer):
        out = jax.device_put(out, like.sharding)
    return out


def _flattened(src: PyTree, tgt: Any, params: Any, where: str) -> dict:
    """The moment tree ``src`` in ``flat_moments``'s layout of ``params``: one buffer per dtype
    group, and a buffer of its own for each leaf that ``tgt`` (the dict of buffers) keeps apart."""
    if not isinstance(tgt, dict):
        raise ValueError(
            f"{_NAME}: {where}: inside flat_moments the moments should be a dict of buffers, got "
            f"{type(tgt).__name__}. Put flat_moments outermost (below monitor), as its docstring "
            "says."
        )
    params_def = jax.tree.structure(params)
    if jax.tree.structure(src) != params_def:
        raise ValueError(
            f"{_NAME}: {where}: the optax moments do not have the structure of params "
            f"(optax: {jax.tree.structure(src)}, params: {params_def}); pass the params the "
            "optax state was built for."
        )
    layout = flat._Layout.of(params, None)
    keys = tuple(
        jax.tree_util.keystr(path) if jax.tree_util.keystr(path) in tgt else key
        for (path, _), key in zip(
            jax.tree_util.tree_leaves_with_path(params), layout.keys, strict=True
        )
    )
    own = frozenset(k for k in keys if k in tgt and not _is_dtype_name(k)) | layout.own
    layout = layout._replace(keys=keys, own=own)
    if set(keys) != set(tgt):
        raise ValueError(
            f"{_NAME}: {where}: cannot rebuild flat_moments' buffers {sorted(tgt)} from params "
            f"(got {sorted(set(keys))}); pass the params tx will update, unchanged in structure."
        )
    return layout.flatten(src)


def _is_dtype_name(key: str) -> bool:
    try:
        jnp.dtype(key)
    except TypeError:
        return False
    return True


# --- schedules and injected hyperparameters -----------------------------------------------------


def _carry_schedules(optax_state: PyTree, target: PyTree, step: jax.Array | None) -> PyTree:
    """Schedule counters paired in order when both sides hold the same kinds, else set to
    ``step`` (the Adam step count; kept as initialized when the Adam counts differ)."""
    sources = _find(optax_state, _SCHEDULE)
    targets = _find(target, _SCHEDULE)
    paired = [type(n) for _, n in sources] == [type(n) for _, n in targets]
    counts = iter([n.count for _, n in sources])

    def visit(path: str, node: Any, in_flat: bool) -> Any:
        if paired:
            count = jnp.asarray(next(counts))
        elif step is not None:
            count = jnp.asarray(step)
        else:
            return node
        return node._replace(count=_tree.cast_like(count, node.count))

    return _rebuild(target, visit, _SCHEDULE)


def _carry_injected(optax_state: PyTree, target: PyTree, step: jax.Array | None) -> PyTree:
    """``inject_hyperparams`` states: count and shared hyperparameter values paired in order when
    both sides hold the same number, else count set to ``step``."""
    sources = _find(optax_state, _INJECT)
    targets = _find(target, _INJECT)
    paired = len(sources) == len(targets)
    found = iter(sources)

    def visit(path: str, node: Any, in_flat: bool) -> Any:
        src = next(found)[1] if paired else None  # taken before the nested ones: pre-order
        inner = _rebuild(node.inner_state, visit, _INJECT)
        if src is None:
            if step is None:
                return node._replace(inner_state=inner)
            count = _tree.cast_like(jnp.asarray(step), node.count)
            return node._replace(count=count, inner_state=inner)
        values = dict(node.hyperparams)
        for name, value in src.hyperparams.items():
            if name in values and jnp.shape(value) == jnp.shape(values[name]):
                values[name] = _tree.cast_like(jnp.asarray(value), values[name])
        count = _tree.cast_like(jnp.asarray(src.count), node.count)
        return node._replace(count=count, hyperparams=values, inner_state=inner)

    return _rebuild(target, visit, _INJECT)
