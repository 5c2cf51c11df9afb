"""Optimizer state partitioned over data-parallel replicas (ZeRO stage 1).

Under data parallelism the parameters are replicated over the ``data`` mesh axis, and
:func:`adam_jax.state_sharding` makes the state follow them: every replica holds all of it (8
bytes per parameter for Adam). :func:`partitioned` splits the state of any adam_jax optimizer
over that axis instead, while the parameters stay as the user placed them (replicated over
``data``, or split over another axis as in FSDP):

1. the reduced gradient is constrained to the state's layout, so the partitioner turns the
   gradient's all-reduce into a reduce-scatter (on GPU and TPU; XLA:CPU has no such pass and
   slices the all-reduced gradient locally): each device keeps only its slice;
2. the wrapped transformation runs unchanged on those slices: each device updates only its slice
   of the moments (no device holds the whole state, not even at ``init``);
3. the update is constrained back to the parameters' sharding: one all-gather per leaf.

Design. The wrapper adds no state of its own and changes no leaf's shape or dtype: only where
the leaves live. So a partitioned state *is* the wrapped transformation's state. A checkpoint of
it restores with or without the wrapper, onto any mesh (:func:`adam_jax.restore_checkpoint`, then
``jax.device_put`` to :func:`partition_sharding`), and every tool that reads the state
(``step_stats``, ``tree_map_params``, ``state_sharding``) reads it as before. The layout is
decided once, from the parameters' shardings given to :func:`partitioned`: under a mesh of
``Auto`` axes a traced gradient does not show its sharding, so it cannot be read at ``update``.

Layout of one parameter's state: the ``data`` axis is added to the first dimension whose size
divides evenly (after whatever mesh axes already split that dimension). 8-bit moments
(:func:`adam_jax.quantized_moments`) are split only where their codes and block scales split
together: along a leading axis, or along the block axis when every device holds whole blocks, so
no block straddles two devices. A leaf with no such dimension, or already split over ``data``, is
kept whole (as the parameter is): nothing is padded, so the state's shapes never change, and the
cost is that leaf's full state on every device (:func:`partition_report` lists such leaves; for
models whose dimensions are multiples of the device count there are none). Under
:func:`adam_jax.flat_moments` each flat buffer is split over ``data`` when its length divides
evenly; the gradients of its leaves are then all-reduced, not reduce-scattered (the buffer is
cut after the leaves are concatenated), and each leaf's update is gathered from the split buffer
on its own: on many small leaves that costs more than the flat layout saves. On a mesh of ``Explicit`` axes, ``flat_moments`` gives
every leaf whose layout is split a buffer of its own, so its state is grouped otherwise than
without the wrapper.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec, Sharding

from adam_jax import state_nodes

PyTree = Any


class PartitionReport(NamedTuple):
    """Which parameters have their state split over the axis (see :func:`partition_report`).

    Attributes:
      split: the paths of parameters whose state is split over the axis.
      whole: the paths of parameters whose state is kept whole on each device, with the reason.
    """

    split: tuple[str, ...]
    whole: tuple[tuple[str, str], ...]


def _param_shardings(params: PyTree) -> PyTree:
    """The sharding of every parameter leaf; ``ValueError`` naming a leaf without one."""

    def one(path: tuple, leaf: Any) -> Sharding:
        sharding = leaf if isinstance(leaf, Sharding) else getattr(leaf, "sharding", None)
        if not isinstance(sharding, Sharding):
            raise ValueError(
                f"partitioned: parameter leaf {jax.tree_util.keystr(path)} "
                f"({type(leaf).__name__}) has no sharding; pass the parameters as jax.Arrays "
                "placed with jax.device_put, or as jax.ShapeDtypeStruct(shape, dtype, "
                "sharding=...)."
            )
        return sharding

    return jax.tree_util.tree_map_with_path(one, params)


def _check_axis(axis: Any, mesh: Any) -> None:
    if not isinstance(axis, str):
        raise TypeError(f"partitioned: axis must be a mesh axis name (a str); got {axis!r}.")
    if axis not in mesh.axis_names:
        raise ValueError(
            f"partitioned: axis={axis!r} is not an axis of the parameters' mesh; it has "
            f"{tuple(mesh.axis_names)}. Pass the data-parallel axis, e.g. axis="
            f"{mesh.axis_names[0]!r}."
        )


def _mesh_of(shardings: list[Sharding]) -> Any:
    """The one mesh of the parameters' NamedShardings; ``ValueError`` otherwise."""
    meshes = {s.mesh for s in shardings if isinstance(s, NamedSharding)}
    if len(meshes) != 1 or not all(isinstance(s, NamedSharding) for s in shardings):
        kinds = sorted({type(s).__name__ for s in shardings})
        raise ValueError(
            "partitioned: the parameters must all be placed with a NamedSharding on one mesh "
            f"that has the data axis; got {kinds} on {len(meshes)} mesh(es). Place them as "
            "jax.device_put(params, NamedSharding(mesh, PartitionSpec())) for data parallelism."
        )
    return meshes.pop()


def _names(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _split_spec(
    shape: tuple[int, ...], spec: tuple, mesh_shape: Any, axis: str, nodes: tuple = ()
) -> tuple[tuple | None, str]:
    """The spec of a parameter's state with ``axis`` added, or ``(None, why)`` to keep it whole."""
    spec = tuple(spec) + (None,) * (len(shape) - len(tuple(spec)))
    if any(axis in _names(e) for e in spec):
        return None, f"the parameter is already split over {axis!r}"
    n = mesh_shape[axis]
    for dim, size in enumerate(shape):
        names = _names(spec[dim])
        if size % (math.prod(mesh_shape[a] for a in names) * n):
            continue
        entry = (*names, axis)
        new = (*spec[:dim], entry[0] if len(entry) == 1 else entry, *spec[dim + 1 :])
        if all(node.splits_along(new, mesh_shape, dim) for node in nodes):
            return new, ""
    return None, f"no dimension of {shape} divides by {n} devices" + (
        f" into whole pieces of its {', '.join(sorted({type(x).__name__ for x in nodes}))} state"
        if nodes
        else ""
    )


class _Plan(NamedTuple):
    """Where everything goes: per parameter leaf (the gradient's slice) and per state leaf."""

    grads: PyTree  # NamedSharding per parameter leaf: the state's layout for that parameter
    params: PyTree  # the parameters' own shardings (where updates go back to)
    state: PyTree  # NamedSharding per state leaf
    report: PartitionReport


def _plan(tx: optax.GradientTransformation, params: PyTree, axis: str) -> _Plan:
    shardings = _param_shardings(params)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(shardings)
    mesh = _mesh_of([s for _, s in leaves_with_path])
    _check_axis(axis, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    shapes = [tuple(x.shape) for x in jax.tree.leaves(params)]
    abstract = jax.tree.unflatten(
        treedef,
        [
            jax.ShapeDtypeStruct(shape, x.dtype, sharding=s)
            for shape, x, (_, s) in zip(
                shapes, jax.tree.leaves(params), leaves_with_path, strict=True
            )
        ],
    )
    abstract_state = jax.eval_shape(tx.init, abstract)
    index = jax.tree.unflatten(treedef, list(range(len(shapes))))

    # 1. The state nodes standing for each parameter that are more than one array (8-bit
    # moments): their pieces (blocks) must not straddle two devices.
    nodes: dict[int, list[Any]] = {}

    def note(node: Any, i: int) -> Any:
        if isinstance(node, state_nodes.ParamNode):
            nodes.setdefault(i, []).append(node)
        return node

    probe = state_nodes.opaque_init(tx)
    optax.tree_utils.tree_map_params(
        probe, note, abstract_state, index, is_leaf=state_nodes.stands_for_one_param
    )

    # 2. One layout per parameter, for its gradient and every state leaf standing for it.
    split, whole, specs = [], [], []
    for i, ((path, s), shape) in enumerate(zip(leaves_with_path, shapes, strict=True)):
        spec, why = _split_spec(shape, s.spec, mesh.shape, axis, tuple(nodes.get(i, ())))
        specs.append(s if spec is None else NamedSharding(mesh, PartitionSpec(*spec)))
        name = jax.tree_util.keystr(path)
        if spec is None:
            whole.append((name, why))
        else:
            split.append(name)
    grads = jax.tree.unflatten(treedef, specs)
    if _explicit(mesh):  # the state's structure may follow the layout (flat_moments' own buffers)
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, grads
        )
        abstract_state = jax.eval_shape(tx.init, abstract)

    state = optax.tree_utils.tree_map_params(
        probe,
        lambda node, i: state_nodes.place_like_param(node, specs[i], replicated),
        abstract_state,
        index,
        transform_non_params=lambda _: replicated,
        is_leaf=state_nodes.stands_for_one_param,
    )
    state = state_nodes.place_regrouped(
        state, abstract_state, lambda node: _regrouped_layout(node, grads, mesh, axis)
    )
    is_regrouped = state_nodes.is_regrouped
    regrouped = [
        n for n in jax.tree.leaves(abstract_state, is_leaf=is_regrouped) if is_regrouped(n)
    ]
    if regrouped:  # leaves concatenated into a group buffer: their gradients stay as the params
        own = {p for n in regrouped for p in n.own_paths()}
        grads = jax.tree.unflatten(
            treedef,
            [
                g if jax.tree_util.keystr(p) in own else s
                for (p, s), g in zip(leaves_with_path, jax.tree.leaves(grads), strict=True)
            ],
        )
    report = PartitionReport(tuple(split), tuple(whole))
    return _Plan(grads, shardings, state, report)


def _regrouped_layout(node: Any, grads: PyTree, mesh: Any, axis: str) -> Any:
    """Layout of a regrouped state (:func:`adam_jax.flat_moments`): a parameter's own buffer is
    laid out as that parameter's state; a group buffer (1-D) is split over ``axis`` where its
    length (and its pieces, such as 8-bit blocks) allow (on a mesh of ``Explicit`` axes the
    split leaves have buffers of their own, and a group buffer, of the leaves kept whole, stays
    whole); everything else is replicated."""
    by_path = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_leaves_with_path(grads)}
    replicated = NamedSharding(mesh, PartitionSpec())

    def group(x: Any) -> Any:
        if _explicit(mesh):  # the leaves kept whole: flat_moments cannot slice a split buffer
            layout = replicated
        else:
            is_node = isinstance(x, state_nodes.ParamNode)
            spec, _ = _split_spec(tuple(x.shape), (), mesh.shape, axis, (x,) if is_node else ())
            layout = replicated if spec is None else NamedSharding(mesh, PartitionSpec(*spec))
        return state_nodes.place_like_param(x, layout, replicated)

    return node.place(
        own=lambda path, x: state_nodes.place_like_param(
            x, by_path.get(path, replicated), replicated
        ),
        group=group,
        other=replicated,
    )


def partition_sharding(
    tx: optax.GradientTransformation, params: PyTree, axis: str = "data"
) -> PyTree:
    """The sharding of each leaf of ``tx``'s state split over ``axis``, as :func:`partitioned`
    keeps it: for ``jax.jit(..., out_shardings=...)`` and to place a restored checkpoint.

    Args:
      tx: the optimizer (unwrapped or wrapped in :func:`partitioned`: the state is the same).
      params: the parameters, as ``jax.Array`` or ``jax.ShapeDtypeStruct`` leaves with a
        ``NamedSharding``, all on one mesh that has the axis ``axis``.
      axis: the data-parallel mesh axis to split the state over.

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``tx.init(params)``.
    """
    return _plan(tx, params, axis).state


def partition_report(
    tx: optax.GradientTransformation, params: PyTree, axis: str = "data"
) -> PartitionReport:
    """Which parameters' state :func:`partitioned` splits over ``axis`` and which it keeps whole
    (and why): a leaf is kept whole when no dimension divides by the axis size, or when it is
    already split over ``axis``. Arguments as :func:`partition_sharding`."""
    return _plan(tx, params, axis).report


def _is_params_placeholder(params: Any) -> bool:
    """optax.tree_utils.tree_map_params probes ``init`` with a placeholder for the parameters."""
    return type(params).__name__ == "_ParamsPlaceholder" and not jax.tree.leaves(params)


def _explicit(mesh: Any) -> bool:
    return any(t == AxisType.Explicit for t in getattr(mesh, "axis_types", ()))


def _place(x: Any, sharding: NamedSharding) -> Any:
    """``x`` laid out as ``sharding``: a constraint for the partitioner on a mesh of ``Auto``
    axes; on a mesh with ``Explicit`` axes, where the layout is part of the type, a reshard."""
    if _explicit(sharding.mesh):
        return jax.sharding.reshard(x, sharding)
    return jax.lax.with_sharding_constraint(x, sharding)


def _constrain(tree: PyTree, shardings: PyTree) -> PyTree:
    """``tree`` with every leaf constrained to the sharding at its place (``None`` stays)."""
    if tree is None:
        return None
    return jax.tree.map(
        lambda s, x: _place(x, s) if isinstance(s, NamedSharding) else x,
        shardings,
        tree,
        is_leaf=lambda x: isinstance(x, (Sharding, optax.MaskedNode)) or x is None,
    )


def partitioned(
    tx: optax.GradientTransformation, params: PyTree, axis: str = "data"
) -> optax.GradientTransformationExtraArgs:
    """``tx`` with its state split over the data-parallel mesh axis ``axis`` (ZeRO stage 1).

    ``partitioned(adam_jax.adam(1e-3), params)`` keeps ``1/n`` of Adam's ``m`` and ``v`` on each
    of the ``n`` devices of ``axis``, whatever the parameters' sharding. In a jitted train step
    the gradient is reduce-scattered instead of all-reduced (where the backend has that pass:
    GPU, TPU; XLA:CPU all-reduces, then slices locally), each device updates its slice of the
    state, and the update is all-gathered back to the parameters' sharding: the same bytes on
    the wire as data parallelism's all-reduce. The update math is elementwise and runs unchanged
    on each slice, so the updates are the unwrapped ones up to rounding: XLA contracts
    ``a*b + c`` into one fused multiply-add in some fused kernels and not others, and the two
    programs fuse differently (a unit or two in the last place of a leaf's largest element).
    Reductions over the whole tree (``optax.clip_by_global_norm``, ``monitor``'s statistics)
    sum per device, then across devices, in another order than one device does.

    The state has the structure, shapes and dtypes of ``tx``'s state (the wrapper changes only
    where its leaves live), so checkpoints move freely between the two. See the module docstring
    for how each leaf is split, and :func:`partition_report` for the leaves kept whole.

    Put it outermost: around ``optax.chain(...)``, ``optax.masked``, ``optax.MultiSteps``,
    ``flat_moments``, ``quantized_moments``, ``inject_hyperparams`` and ``monitor``. ``init`` and
    ``update`` are meant for ``jax.jit``; ``init`` outside ``jit`` runs as one jitted call, so
    that no device holds the whole state even then.

    Args:
      tx: any optax transformation over the parameters, e.g. ``adam_jax.adam(1e-3)``.
      params: the parameters (or ``jax.ShapeDtypeStruct`` leaves with their ``NamedSharding``),
        placed as they will be trained, all on one mesh that has the axis ``axis``.
      axis: the data-parallel mesh axis (the one the batch is split over).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is ``tx``'s, laid out as
      :func:`partition_sharding` says.
    """
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(
            f"partitioned: tx must be an optax.GradientTransformation, e.g. adam_jax.adam(1e-3); "
            f"got {type(tx).__name__} {tx!r:.60}."
        )
    plan = _plan(tx, params, axis)
    inner_update = optax.with_extra_args_support(tx).update

    def init_in_place(params: optax.Params) -> optax.OptState:
        # zeros_like reads the parameter: from its slice, each device computes only its slice.
        return _constrain(tx.init(_constrain(params, plan.grads)), plan.state)

    def init_fn(params: optax.Params) -> optax.OptState:
        if _is_params_placeholder(params):
            return tx.init(params)
        _check_structure(params, plan.params)
        return jax.jit(init_in_place, out_shardings=plan.state)(params)  # inlined under jit

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        _check_structure(updates, plan.params)
        grads = _constrain(updates, plan.grads)  # the all-reduce becomes a reduce-scatter
        state = _constrain(state, plan.state)
        params = _constrain(params, plan.grads)  # a local slice: no communication
        updates, state = inner_update(grads, state, params, **extra)
        return _constrain(updates, plan.params), _constrain(state, plan.state)  # all-gather

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_structure(tree: PyTree, shardings: PyTree) -> None:
    have, want = jax.tree.structure(tree), jax.tree.structure(shardings)
    if have != want:
        raise ValueError(
            "partitioned: the tree given does not have the structure of the parameters given to "
            f"partitioned(tx, params):\n  got      {have}\n  expected {want}\nBuild the wrapper "
            "from the parameters you train, and keep it outermost (masks go inside)."
        )
