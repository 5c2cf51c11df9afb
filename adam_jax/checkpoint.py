"""Save and restore ``(params, opt_state)`` with orbax-checkpoint, refusing a mismatched optimizer.

A checkpoint holds three items: ``params`` and ``opt_state`` (orbax ``StandardSave``, sharded arrays
written by every process) and ``optimizer``, a JSON fingerprint of both trees: their structure
(which names the state types, e.g. ``ScaleByAdamState``, and shows ``nu_max=None`` without
AMSGrad) and every leaf's dtype and shape (which shows ``mu_dtype``/``nu_dtype``). On restore the
fingerprint of ``tx.init(params)`` must match, so a checkpoint of a different optimizer
configuration raises a ``ValueError`` that lists the differences instead of being restored into
the wrong fields. The fingerprint also holds the hyperparameters every adam_jax optimizer records
in its state (:func:`adam_jax.hyperparams`: learning rate, ``b1``, ``b2``, ``eps``, ...), so
resuming with a different learning rate is refused too, unless the change is deliberate
(``allow_changes={"learning_rate"}``). Anything else can be stored and compared as ``config``.

Restoring onto a mesh reads each array straight into its target sharding: the parameters' own
shardings and, for the state, :func:`adam_jax.state_sharding`. The flat buffers of
:func:`adam_jax.flat_moments` are stored one per parameter (:meth:`adam_jax.state_nodes.Regrouped.per_parameter`), so
such a checkpoint restores whatever the grouping (``max_leaf_size``) and the mesh, saved and
restored: on one device, a checkpoint written on an ``Explicit`` mesh, and the other way round.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax import _ckpt_files, _extras, _hyperparams, state_nodes
from adam_jax.sharding import state_sharding

PyTree = Any

_SHOWN = 3  # lines of differences in an error's message


def _orbax():
    _extras.require("checkpoint", "adam_jax checkpoints")
    import orbax.checkpoint as ocp

    return ocp


def _sync(name: str) -> None:
    """Wait for every process (multi-process runs); a no-op in a single process."""
    if jax.process_count() > 1:
        _orbax().multihost.sync_global_processes(name)


def _recover(directory: Path) -> None:
    """Finish or roll back an interrupted replacement (process 0 does the renames, holding the
    checkpoint's lock; see ``adam_jax._ckpt_files``). Only a save recovers: a restore writes
    nothing."""
    if jax.process_index() == 0:
        _ckpt_files.recover(directory)
    _sync("adam_jax_checkpoint_recover")


def _is_inject(x: Any) -> bool:
    return isinstance(x, _hyperparams.INJECT_STATES)


def _walk(tree: PyTree, where: str = "", canon: str = ""):
    """Yield ``(path, canonical path, leaf, role)`` for every leaf of an optimizer state.

    The canonical path leaves out ``optax.inject_hyperparams`` wrappers, so a state restores into
    an optimizer that gained or lost one. Roles: ``"state"`` (restored from the checkpoint),
    ``"step"`` (an Adam/AdaMax step count, restored too); ``"record"`` (a value of a
    hyperparameter record) and ``"inject"`` (a value injected with ``optax.inject_hyperparams``),
    both taken from the optimizer of this run; ``"inject_count"`` and ``"schedule_count"`` (the
    counts of ``inject_hyperparams`` and of a learning-rate schedule: restored where the
    checkpoint has them, else set to the Adam/AdaMax step count, so a constant learning rate
    can become a schedule on resume).
    """
    stop = lambda x: (
        _hyperparams.has_record(x) or _is_inject(x) or isinstance(x, optax.ScaleByScheduleState)
    )
    for path, node in jax.tree_util.tree_flatten_with_path(tree, is_leaf=stop)[0]:
        key = jax.tree_util.keystr(path)
        if _is_inject(node):
            for sub, leaf in jax.tree_util.tree_leaves_with_path(node._replace(inner_state=None)):
                name = jax.tree_util.keystr(sub)
                role = (
                    "inject"
                    if name.startswith(".hyperparams[")
                    else "inject_count"
                    if name == ".count"
                    else "schedule_count"  # the state of an injected schedule
                )
                yield where + key + name, canon + key + "#inject" + name, leaf, role
            yield from _walk(node.inner_state, where + key + ".inner_state", canon + key)
        elif _hyperparams.has_record(node):
            for sub, leaf in jax.tree_util.tree_leaves_with_path(node._replace(hyperparams=None)):
                name = jax.tree_util.keystr(sub)
                role = "step" if name == ".count" else "state"
                yield where + key + name, canon + key + name, leaf, role
            for sub, leaf in jax.tree_util.tree_leaves_with_path(node.hyperparams):
                name = ".hyperparams" + jax.tree_util.keystr(sub)
                yield where + key + name, canon + key + name, leaf, "record"
        elif isinstance(node, optax.ScaleByScheduleState):
            yield where + key + ".count", canon + key + ".count", node.count, "schedule_count"
        else:
            yield where + key, canon + key, node, "state"


def _outline(tree: PyTree) -> Any:
    """The state's transformations by state type: a chain as a list, a wrapper as
    ``{type: inner}``, ``optax.inject_hyperparams`` left out (it may be added or removed)."""
    if _is_inject(tree):
        return _outline(tree.inner_state)
    if isinstance(tree, optax.ScaleByScheduleState):  # a learning rate, constant or scheduled
        return "EmptyState"
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):  # a chain, nested ones flat
        found = []
        for x in tree:
            inner = _outline(x)
            found += inner if isinstance(inner, list) else [inner]
        return found
    inner = getattr(tree, "inner_state", None)
    if inner is not None and hasattr(tree, "_fields"):
        return {type(tree).__name__: _outline(inner)}
    return type(tree).__name__


def _tree_fingerprint(tree: PyTree) -> dict[str, Any]:
    leaves = {
        jax.tree_util.keystr(path): f"{jnp.dtype(leaf.dtype).name}{list(leaf.shape)}"
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }
    return {"structure": str(jax.tree.structure(tree)), "leaves": leaves}


def _state_fingerprint(opt_state: PyTree) -> dict[str, Any]:
    found = _tree_fingerprint(opt_state)
    found["canonical"] = {path: [canon, role] for path, canon, _, role in _walk(opt_state)}
    found["outline"] = _outline(opt_state)
    return found


def _jsonable(value: Any) -> Any:
    value = np.asarray(value)
    if value.ndim:
        return [None if np.isnan(v) else float(v) for v in value.astype(np.float64)]
    return float(value)


def _by_owner(found: Any) -> dict[str, dict[str, Any]]:
    """``{canonical path of each Adam/AdaMax state: {name: value}}``, JSON-able, from
    ``(canonical path of a record leaf, its value)`` pairs."""
    records: dict[str, dict[str, Any]] = {}
    for canon, value in found:
        owner, name = canon.rsplit(".hyperparams", 1)
        records.setdefault(owner or "(root)", {})[name[2:-2]] = _jsonable(value)
    return records


def _canonical_records(opt_state: PyTree) -> dict[str, dict[str, Any]]:
    """The records of a concrete state, by the canonical path of their states."""
    return _by_owner((canon, leaf) for _, canon, leaf, role in _walk(opt_state) if role == "record")


def checkpoint_fingerprint(
    params: PyTree, opt_state: PyTree, config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON-able description stored beside a checkpoint and compared on restore.

    Args:
      params: parameters (arrays or ``jax.ShapeDtypeStruct``).
      opt_state: optimizer state (concrete arrays: its hyperparameter records are read).
      config: optional JSON-able mapping, e.g. the optimizer's hyperparameters.

    Returns:
      ``{"params": ..., "opt_state": ..., "hyperparams": ..., "config": ...}`` with each tree's
      structure and every leaf's dtype and shape, the state's leaves by their canonical paths
      (``optax.inject_hyperparams`` wrappers left out) and its outline (transformations by state
      type), and the hyperparameters recorded in ``opt_state`` (a schedule by its values at
      ``SCHEDULE_STEPS``). The flat buffers of :func:`adam_jax.flat_moments` are described one
      per parameter, as they are stored.
    """
    return _fingerprint(params, state_nodes.per_parameter(opt_state, params), config)


def _fingerprint(
    params: PyTree, stored: PyTree, config: Mapping[str, Any] | None
) -> dict[str, Any]:
    """:func:`checkpoint_fingerprint` of the state as stored (``state_nodes.per_parameter``)."""
    return {
        "format": 2,
        "params": _tree_fingerprint(params),
        "opt_state": _state_fingerprint(stored),
        "hyperparams": _canonical_records(stored),
        "config": None if config is None else json.loads(json.dumps(dict(config))),
    }


def save_checkpoint(
    directory: str | Path,
    params: PyTree,
    opt_state: PyTree,
    *,
    config: Mapping[str, Any] | None = None,
    force: bool = False,
) -> None:
    """Write ``params``, ``opt_state`` and their fingerprint to ``directory`` (blocking).

    In a multi-process run every process calls this with its (globally sharded) arrays; orbax
    writes each shard once.

    Args:
      directory: the checkpoint directory; must not exist unless ``force``.
      params: the parameters.
      opt_state: the optimizer state, e.g. ``tx.init(params)`` after some updates. ``None``
        subtrees (``nu_max`` without AMSGrad) are stored as such.
      config: optional JSON-able mapping stored with the checkpoint (e.g. hyperparameters);
        :func:`restore_checkpoint` compares it when it is given one.
      force: replace an existing checkpoint at ``directory``. Only an adam_jax checkpoint is
        replaced (any other existing folder raises ``ValueError``), and never in place: the new
        one is written beside it and swapped in, so a crash at any moment leaves the old or the
        new checkpoint restorable.

    Every file's SHA-256 is stored in ``adam_jax_manifest.json``, written last;
    :func:`restore_checkpoint` verifies them.

    Saves to one ``directory`` run one at a time: process 0 holds the lock file
    ``.NAME.adam_jax-lock`` beside it (deleted afterwards) and a second save waits for it.
    ``directory`` must not be a symbolic link (it is replaced by renames): pass the real path.
    """
    _check_not_wrapped(params, "params", "save_checkpoint")
    _check_not_wrapped(opt_state, "opt_state", "save_checkpoint")
    ocp = _orbax()
    directory = Path(directory).absolute()
    _ckpt_files.check_path(directory, "save_checkpoint")
    first = jax.process_index() == 0
    if first:
        directory.parent.mkdir(parents=True, exist_ok=True)
    with _ckpt_files.locked(directory, hold=first):
        _recover(directory)
        _ckpt_files.check_replaceable(directory, force, "save_checkpoint")
        staging = _ckpt_files.sibling(directory, "new")
        stored = state_nodes.per_parameter(opt_state, params)  # flat_moments' buffers per parameter
        fingerprint = _fingerprint(params, stored, config)
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            checkpointer.save(
                staging,
                args=ocp.args.Composite(
                    params=ocp.args.StandardSave(params),
                    opt_state=ocp.args.StandardSave(_flat(stored)),
                    optimizer=ocp.args.JsonSave(fingerprint),
                ),
            )
        if first:
            _ckpt_files.write_manifest(staging)
            _ckpt_files.swap_into_place(staging, directory)
        _sync("adam_jax_checkpoint_saved")


def _flat(opt_state: PyTree) -> dict[str, Any]:
    """The state's leaves as ``{"00000": leaf, ...}`` in flattening order: stored so, a state
    restores into an optimizer whose tree differs in wrappers or records (matched by the
    fingerprint's canonical paths)."""
    return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(opt_state))}


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the optimizer (or parameters, or config) given to restore it.

    The message names the main differences in a few lines; ``differences`` lists all of them.
    """

    def __init__(self, message: str, differences: list[str]):
        super().__init__(message)
        self.differences = differences


def _type_name(outline: Any) -> str:
    if isinstance(outline, dict):
        ((name, inner),) = outline.items()
        return f"{name}({_type_name(inner)})"
    if isinstance(outline, list):
        return "chain(" + ", ".join(_type_name(x) for x in outline) + ")"
    return str(outline)


def _explain_outline(saved: Any, current: Any, where: str = "the optimizer") -> list[str]:
    """One line per transformation added, removed or changed, by comparing the outlines."""
    if isinstance(saved, list) and isinstance(current, list):
        if len(saved) != len(current):
            old = [_type_name(x) for x in saved]
            new = [_type_name(x) for x in current]
            lines = [f"{where} has {len(current)} transformations, the checkpoint {len(saved)}"]
            matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
            for op, i1, i2, j1, j2 in matcher.get_opcodes():
                if op in ("delete", "replace"):
                    lines.append(
                        f"  the checkpoint's [{i1}:{i2}] {', '.join(old[i1:i2])} is not in this run"
                    )
                if op in ("insert", "replace"):
                    lines.append(
                        f"  this run's [{j1}:{j2}] {', '.join(new[j1:j2])} is not in the checkpoint"
                    )
            return lines
        return [
            line
            for i, (a, b) in enumerate(zip(saved, current, strict=True))
            for line in _explain_outline(a, b, f"{where}[{i}]")
        ]
    if isinstance(saved, dict) and isinstance(current, dict) and saved.keys() == current.keys():
        ((name, a),) = saved.items()
        return _explain_outline(a, current[name], f"{where} ({name})")
    if saved != current:
        return [f"{where}: checkpoint {_type_name(saved)}, this run {_type_name(current)}"]
    return []


def _check_allow_changes(allow_changes: Any, known: set[str]) -> set[str] | bool:
    if allow_changes is True:
        return True
    if allow_changes is None or allow_changes is False:
        return set()
    names = {allow_changes} if isinstance(allow_changes, str) else allow_changes
    try:
        names = set(names)
    except TypeError:
        raise TypeError(
            f"restore_checkpoint: allow_changes={allow_changes!r}; expected True, or a collection "
            "of hyperparameter names such as {'learning_rate'}."
        ) from None
    unknown = sorted(n for n in names if n not in known)
    if unknown:
        raise ValueError(
            f"restore_checkpoint: allow_changes names {', '.join(map(repr, unknown))}, which "
            f"no optimizer here records; known names: {', '.join(sorted(known))}."
        )
    return names


def _same_values(old: Any, new: Any) -> bool:
    a, b = np.asarray(old, np.float64), np.asarray(new, np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-6, atol=0.0, equal_nan=False))


def _describe(values: Mapping[str, Any], name: str) -> str:
    if name + "_schedule" in values:
        return "a schedule"
    if name not in values:
        return "absent"
    return repr(_hyperparams.as_number(np.float32(values[name])))


def _hyperparams_differences(saved: Mapping, current: Mapping, allowed: Any) -> list[str]:
    """One line per recorded hyperparameter that differs and is not in ``allowed``: numbers by
    value, a schedule by its values at ``SCHEDULE_STEPS`` (one that cannot be evaluated there
    never counts as equal)."""
    found = []
    for owner in sorted(saved.keys() | current.keys()):
        old, new = saved.get(owner, {}), current.get(owner, {})
        names = {n.removesuffix("_schedule") for n in old.keys() | new.keys()}
        for name in sorted(names):
            if allowed is True or name in allowed:
                continue
            sched = name + "_schedule"
            if sched in old or sched in new:
                same = sched in old and sched in new and _same_values(old[sched], new[sched])
            else:
                same = name in old and name in new and _same_values(old[name], new[name])
            if not same:
                found.append(
                    f"hyperparameter {owner}.{name}: checkpoint {_describe(old, name)}, "
                    f"this run {_describe(new, name)}"
                )
    return found


def _record_values(tx: optax.GradientTransformation, abstract_params: PyTree) -> dict[str, Any]:
    """{path: value} of the record and injected leaves of ``tx.init(params)``, computed without
    allocating the state (everything else is dead code to XLA)."""

    def init_records() -> dict[str, Any]:
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype), abstract_params)
        return {
            path: leaf
            for path, _, leaf, role in _walk(tx.init(zeros))
            if role in ("record", "inject")
        }

    return jax.device_get(jax.jit(init_records)())


def _with_default_device(params: PyTree) -> PyTree:
    """Abstract parameters; where no leaf has a sharding, all go to the default device."""
    has = [
        isinstance(getattr(x, "sharding", None), jax.sharding.Sharding)
        for x in jax.tree.leaves(params)
    ]
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0]) if not any(has) else None
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=default or getattr(x, "sharding", None)
        ),
        params,
    )


def restore_checkpoint(
    directory: str | Path,
    tx: optax.GradientTransformation,
    params: PyTree,
    *,
    config: Mapping[str, Any] | None = None,
    allow_changes: Collection[str] | bool | None = (),
    state_shardings: PyTree | None = None,
) -> tuple[PyTree, PyTree]:
    """Read ``(params, opt_state)`` written by :func:`save_checkpoint`, laid out like ``params``.

    The state is rebuilt for ``tx``, the optimizer training continues with: its step counts and
    moments come from the checkpoint, its hyperparameters from ``tx``. So ``tx`` wins wherever
    the two differ, and a difference must be named in ``allow_changes`` (a learning rate that
    is now a schedule, a new injected value, ...). Adding or removing
    ``optax.inject_hyperparams`` around the optimizer is not a difference: the step count and
    moments carry over, and an added wrapper's count starts at the wrapped state's step count.

    Args:
      directory: the checkpoint directory.
      tx: the optimizer training continues with; its state must hold the same moments (dtypes
        and shapes) as the saved one.
      params: the target parameters: ``jax.Array`` or ``jax.ShapeDtypeStruct`` leaves with the
        ``sharding`` to restore onto (values are ignored); without any sharding, everything
        goes to the default device. The state goes to ``state_sharding(tx, params)``.
      config: when given, must equal the ``config`` the checkpoint was saved with.
      allow_changes: names of recorded hyperparameters that may differ from the checkpoint's,
        e.g. ``{"learning_rate"}`` to resume with a deliberately new learning rate (``True``:
        any hyperparameter; ``None``/``False``/``()``: none). A name no optimizer records
        raises ``ValueError`` listing the known ones.
      state_shardings: where the state goes instead of ``state_sharding(tx, params)``: a tree of
        shardings with the structure of ``tx.init(params)``, e.g.
        ``adam_jax.partition_sharding(tx, params)`` to read a partitioned state straight into
        its shards (no device then holds the whole state, even for a moment).

    Returns:
      ``(params, opt_state)``, sharded as above; every restored array is bit-identical to the
      saved one.

    Raises:
      CheckpointMismatchError: (a ``ValueError``) the checkpoint does not fit ``tx``, ``params``
        or ``config``: the message says what in a few lines (transformations added or removed,
        a leaf whose shape or dtype changed, a hyperparameter); ``err.differences`` has all.
      ValueError: the checkpoint is damaged: a file does not match the checksum recorded at
        save time, an item is missing, or a link leads out of the checkpoint folder.
    """
    ocp = _orbax()
    directory = Path(directory).absolute()
    _ckpt_files.check_path(directory, "restore_checkpoint")
    directory = _ckpt_files.to_read(directory)  # moves nothing: a restore never writes
    _ckpt_files.verify(directory, "restore_checkpoint")
    _check_not_wrapped(params, "params", "restore_checkpoint")
    abstract_params = _with_default_device(params)
    target = jax.eval_shape(tx.init, abstract_params)
    if state_shardings is None:
        shardings = state_sharding(tx, abstract_params)
    else:
        shardings = state_shardings
        is_sharding = lambda x: isinstance(x, jax.sharding.Sharding)
        if jax.tree.structure(shardings, is_leaf=is_sharding) != jax.tree.structure(
            target
        ) or not all(is_sharding(x) for x in jax.tree.leaves(shardings, is_leaf=is_sharding)):
            raise ValueError(
                "restore_checkpoint: state_shardings must be a tree of jax.sharding.Sharding with "
                "the structure of tx.init(params), e.g. adam_jax.partition_sharding(tx, params) "
                "or adam_jax.state_sharding(tx, params)."
            )
    # The state as stored: flat_moments' buffers one per parameter.
    stored = jax.eval_shape(lambda t: state_nodes.per_parameter(t, abstract_params), target)
    treedef = jax.tree.structure(stored)
    walked = list(_walk(stored))
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        saved = checkpointer.restore(
            directory, args=ocp.args.Composite(optimizer=ocp.args.JsonRestore())
        ).optimizer
        if not isinstance(saved, Mapping) or saved.get("format") != 2:
            raise ValueError(
                f"restore_checkpoint: {directory} has no optimizer fingerprint of checkpoint "
                "format 2, which this adam_jax writes: it was written by adam_jax 0.3.0 or "
                "earlier (format 1, the state's tree as it was then), which restores it. A "
                "checkpoint of an optax state converts with adam_jax.from_optax_state."
            )
        records = _record_values(tx, abstract_params)
        current_records = _by_owner(
            (canon, records[path]) for path, canon, _, role in walked if role == "record"
        )
        known = {
            n.removesuffix("_schedule")
            for values in (*saved.get("hyperparams", {}).values(), *current_records.values())
            for n in values
        }
        allowed = _check_allow_changes(allow_changes, known)

        summary, differences, by_canon = _differences(
            saved, abstract_params, stored, walked, current_records, allowed, config
        )
        # The first lines say what changed: transformations added or removed, else the
        # hyperparameters, else the leaves; the error's .differences has every line.
        if differences:
            shown = (summary or differences)[:_SHOWN]
            listed = "\n  ".join(shown)
            more = len(differences) - len(shown)
            raise CheckpointMismatchError(
                f"restore_checkpoint: checkpoint {directory} does not fit the optimizer, "
                f"parameters or config given:\n  {listed}"
                + (
                    f"\n  ... and {more} more (all of them: the error's .differences)"
                    if more > 0
                    else ""
                )
                + "\nRestore with the optimizer (and config) the checkpoint was saved with, or "
                "name the hyperparameters you mean to change in allow_changes=.",
                differences,
            )

        # Read every saved leaf, each onto the sharding of the leaf it becomes (replicated
        # for those this run does not use, and for parts of flat buffers of several leaves).
        target_shardings = jax.tree.leaves(shardings)
        sharding_of = {
            canon: s for (_, canon, _, _), s in zip(_walk(target), target_shardings, strict=True)
        }
        fallback = _fallback_sharding(target_shardings)
        abstract_saved = {}
        old_s = saved["opt_state"]
        for i, path in enumerate(old_s["leaves"]):  # in the order they were stored
            dtype, shape = _parse_leaf(old_s["leaves"][path])
            canon = old_s["canonical"][path][0]
            abstract_saved[f"{i:05d}"] = jax.ShapeDtypeStruct(
                shape, dtype, sharding=sharding_of.get(canon, fallback)
            )
        restored = checkpointer.restore(
            directory,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params),
                opt_state=ocp.args.StandardRestore(abstract_saved),
            ),
        )
    read = restored.opt_state
    leaves = []
    for path, canon, _, role in walked:
        sharding = sharding_of.get(canon, fallback)
        if role in ("record", "inject"):
            leaves.append(jax.device_put(records[path], sharding))
        elif canon in by_canon:
            leaves.append(read[f"{by_canon[canon][0]:05d}"])
        else:  # inject_hyperparams or a schedule added on resume: the step count
            leaves.append(jax.device_put(_step_count(walked, by_canon, read), sharding))
    opt_state = jax.tree.unflatten(treedef, leaves)
    return restored.params, state_nodes.from_per_parameter(
        opt_state, target, abstract_params, shardings
    )


def _differences(
    saved: Mapping[str, Any],
    abstract_params: PyTree,
    target: PyTree,
    walked: list,
    current_records: dict[str, dict[str, Any]],
    allowed: Any,
    config: Mapping[str, Any] | None,
) -> tuple[list[str], list[str], dict[str, tuple[int, str, str]]]:
    """What differs between a checkpoint's fingerprint and this run, and the saved leaves by
    canonical path (``{canonical path: (index, path, role)}``).

    Returns ``(summary, differences, by_canon)``: ``summary`` the transformations added, removed
    or changed; ``differences`` every difference, the summary's lines first, then the
    hyperparameters and config, then the parameters' and the state's leaves (the state's
    matched by canonical path).
    """
    differences: list[str] = []
    summary: list[str] = []
    old_p, new_p = saved.get("params") or {}, _tree_fingerprint(abstract_params)
    if old_p.get("structure") != new_p["structure"]:
        summary.append(
            f"params structure: checkpoint {old_p.get('structure')}, this run {new_p['structure']}"
        )
    for key in sorted(old_p.get("leaves", {}).keys() | new_p["leaves"].keys()):
        a, b = old_p.get("leaves", {}).get(key, "absent"), new_p["leaves"].get(key, "absent")
        if a != b:
            differences.append(f"params leaf {key}: checkpoint {a}, this run {b}")
    old_s = saved["opt_state"]
    saved_order = list(old_s["leaves"])
    by_canon = {
        canon: (i, path, role)
        for i, (path, (canon, role)) in enumerate((p, old_s["canonical"][p]) for p in saved_order)
    }
    summary += _explain_outline(old_s.get("outline"), _outline(target))
    current_leaves = _tree_fingerprint(target)["leaves"]
    wanted_canon = set()
    for path, canon, _, role in walked:
        if role in ("record", "inject"):
            continue
        wanted_canon.add(canon)
        have = by_canon.get(canon)
        if have is None:
            if role in ("state", "step"):
                differences.append(
                    f"opt_state leaf {path}: checkpoint absent, this run {current_leaves[path]}"
                )
        elif old_s["leaves"][have[1]] != current_leaves[path]:
            differences.append(
                f"opt_state leaf {path}: checkpoint {old_s['leaves'][have[1]]}, this run "
                f"{current_leaves[path]}"
            )
    for canon, (_, path, role) in by_canon.items():
        if role in ("state", "step") and canon not in wanted_canon:
            differences.append(
                f"opt_state leaf {path}: checkpoint {old_s['leaves'][path]}, this run absent"
            )
    hyper = _hyperparams_differences(saved.get("hyperparams") or {}, current_records, allowed)
    if config is not None and saved.get("config") != json.loads(json.dumps(dict(config))):
        hyper.append(f"config: checkpoint {saved.get('config')}, this run {dict(config)}")
    return summary, summary + hyper + differences, by_canon


def _step_count(walked: list, by_canon: dict, read: dict) -> Any:
    """The step count of the (first) Adam/AdaMax state, as restored."""
    for _, canon, _, role in walked:
        if role == "step" and canon in by_canon:
            return read[f"{by_canon[canon][0]:05d}"]
    return jnp.zeros([], jnp.int32)


def _fallback_sharding(shardings: list) -> Any:
    for s in shardings:
        if isinstance(s, jax.sharding.NamedSharding):
            return jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec())
    return shardings[0] if shardings else jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _parse_leaf(text: str) -> tuple[Any, tuple[int, ...]]:
    """``"float32[3, 4]"`` -> (float32, (3, 4))."""
    name, shape = text.split("[", 1)
    dims = shape.rstrip("]").strip()
    return jnp.dtype(name), tuple(int(d) for d in dims.split(",")) if dims else ()


_NNX_RECIPE = """\
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    adam_jax.save_checkpoint(path, params, nnx.as_pure(optimizer.opt_state))
    # ... and to resume:
    params, opt_state = adam_jax.restore_checkpoint(path, tx, params)
    adam_jax.load_into_nnx(model, optimizer, params, opt_state)"""


def _check_not_wrapped(tree: PyTree, name: str, where: str) -> None:
    """A clear error for Flax NNX variables in ``tree``: ``nnx.state(optimizer)`` wraps every
    array of the optimizer state in one, and their structure is then Flax's, not the
    optimizer's."""
    is_nnx = lambda x: (
        type(x).__module__.startswith("flax.nnx")
        and any(c.__name__ == "Variable" for c in type(x).__mro__)
    )
    found = [x for x in jax.tree.leaves(tree, is_leaf=is_nnx) if is_nnx(x)]
    if found:
        raise ValueError(
            f"{where}: {name} holds Flax NNX variables ({type(found[0]).__name__}); checkpoints "
            "hold plain arrays in the optimizer's own structure. With an nnx.Optimizer:\n"
            + _NNX_RECIPE
        )
