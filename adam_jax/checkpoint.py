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
shardings and, for the state, :func:`adam_jax.state_sharding`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adam_jax import _ckpt_files, _extras, _hyperparams
from adam_jax.sharding import state_sharding

PyTree = Any

_MAX_LISTED = 8


def _orbax():
    _extras.require("checkpoint", "adam_jax checkpoints")
    import orbax.checkpoint as ocp

    return ocp


def _sync(name: str) -> None:
    """Wait for every process (multi-process runs); a no-op in a single process."""
    if jax.process_count() > 1:
        _orbax().multihost.sync_global_processes(name)


def _recover(directory: Path) -> None:
    """Finish or roll back an interrupted replacement (process 0 does the renames)."""
    if jax.process_index() == 0:
        _ckpt_files.recover(directory)
    _sync("adam_jax_checkpoint_recover")


def _tree_fingerprint(tree: PyTree) -> dict[str, Any]:
    leaves = {
        jax.tree_util.keystr(path): f"{jnp.dtype(leaf.dtype).name}{list(leaf.shape)}"
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }
    # Hyperparameter records are compared one by one (_hyperparams_fingerprint), not as structure.
    bare = jax.tree.map(
        lambda x: None if _hyperparams.is_record(x) else x, tree, is_leaf=_hyperparams.is_record
    )
    return {"structure": str(jax.tree.structure(bare)), "leaves": leaves}


def _hyperparams_fingerprint(opt_state: PyTree) -> dict[str, dict[str, Any]]:
    """{path of each Adam/AdaMax state: its recorded hyperparameters, JSON-able}."""
    return {
        path or "(root)": {name: _hyperparams.describe(value) for name, value in record.items()}
        for path, _, record, _ in _hyperparams.records(opt_state)
    }


def checkpoint_fingerprint(
    params: PyTree, opt_state: PyTree, config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON-able description stored beside a checkpoint and compared on restore.

    Args:
      params: parameters (arrays or ``jax.ShapeDtypeStruct``).
      opt_state: optimizer state (arrays or ``jax.ShapeDtypeStruct``).
      config: optional JSON-able mapping, e.g. the optimizer's hyperparameters.

    Returns:
      ``{"params": ..., "opt_state": ..., "hyperparams": ..., "config": ...}`` with each tree's
      structure and every leaf's dtype and shape, and the hyperparameters recorded in
      ``opt_state`` (a schedule by its values at a few steps; an injected value as
      ``"injected"``, since the state itself holds it).
    """
    return {
        "params": _tree_fingerprint(params),
        "opt_state": _tree_fingerprint(opt_state),
        "hyperparams": _hyperparams_fingerprint(opt_state),
        "config": None if config is None else json.loads(json.dumps(dict(config))),
    }


def _hyperparams_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], allowed: Any
) -> list[str]:
    """One line per recorded hyperparameter that differs and is not in ``allowed``."""
    old_all, new_all = saved.get("hyperparams"), current["hyperparams"]
    if old_all is None:  # written before hyperparameters were recorded
        return []
    found = []
    for path in sorted(old_all.keys() | new_all.keys()):
        old, new = old_all.get(path, {}), new_all.get(path, {})
        for name in sorted(old.keys() | new.keys()):
            if old.get(name, "absent") != new.get(name, "absent") and not (
                allowed is True or name in allowed
            ):
                found.append(
                    f"hyperparameter {path}.{name}: checkpoint {old.get(name, 'absent')}, "
                    f"this run {new.get(name, 'absent')}"
                )
    return found


def _differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], check_config: bool, allowed: Any = ()
) -> list:
    found = []
    for section in ("params", "opt_state"):
        old, new = saved.get(section) or {}, current[section]
        if old.get("structure") != new["structure"]:
            found.append(
                f"{section} structure: checkpoint {old.get('structure')}, this run {new['structure']}"
            )
        old_leaves, new_leaves = old.get("leaves") or {}, new["leaves"]
        for key in sorted(old_leaves.keys() | new_leaves.keys()):
            if old_leaves.get(key) != new_leaves.get(key):
                found.append(
                    f"{section} leaf {key}: checkpoint {old_leaves.get(key, 'absent')}, "
                    f"this run {new_leaves.get(key, 'absent')}"
                )
    found += _hyperparams_differences(saved, current, allowed)
    if check_config and saved.get("config") != current["config"]:
        found.append(f"config: checkpoint {saved.get('config')}, this run {current['config']}")
    return found


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
    """
    ocp = _orbax()
    directory = Path(directory).absolute()
    _ckpt_files.check_path(directory, "save_checkpoint")
    _recover(directory)
    _ckpt_files.check_replaceable(directory, force, "save_checkpoint")
    staging = _ckpt_files.sibling(directory, "new")
    fingerprint = checkpoint_fingerprint(params, opt_state, config)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(
            staging,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                optimizer=ocp.args.JsonSave(fingerprint),
            ),
        )
    if jax.process_index() == 0:
        _ckpt_files.write_manifest(staging)
        _ckpt_files.swap_into_place(staging, directory)
    _sync("adam_jax_checkpoint_saved")


def restore_checkpoint(
    directory: str | Path,
    tx: optax.GradientTransformation,
    params: PyTree,
    *,
    config: Mapping[str, Any] | None = None,
    allow_changes: Collection[str] | bool = (),
) -> tuple[PyTree, PyTree]:
    """Read ``(params, opt_state)`` written by :func:`save_checkpoint`, laid out like ``params``.

    Args:
      directory: the checkpoint directory.
      tx: the optimizer training continues with; its state must have the structure, dtypes and
        shapes of the saved one.
      params: the target parameters: ``jax.Array`` or ``jax.ShapeDtypeStruct`` leaves with the
        ``sharding`` to restore onto (values are ignored). The state goes to
        ``state_sharding(tx, params)``.
      config: when given, must equal the ``config`` the checkpoint was saved with.
      allow_changes: names of recorded hyperparameters that may differ from the checkpoint's,
        e.g. ``{"learning_rate"}`` to resume with a deliberately new learning rate (``True``: any
        hyperparameter). The state's structure, dtypes and shapes must match regardless.

    Returns:
      ``(params, opt_state)``, sharded as above, bit-identical to what was saved.

    Raises:
      ValueError: the checkpoint was written for a different optimizer configuration or
        parameters (the message lists what differs); or it is damaged: a file does not match
        the checksum recorded at save time, an item is missing, or a link leads out of the
        checkpoint folder (the message names the file or item).
    """
    ocp = _orbax()
    directory = Path(directory).absolute()
    _ckpt_files.check_path(directory, "restore_checkpoint")
    _recover(directory)
    _ckpt_files.verify(directory, "restore_checkpoint")
    abstract_params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        params,
    )
    shardings = state_sharding(tx, abstract_params)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        jax.eval_shape(tx.init, abstract_params),
        shardings,
    )
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        saved = checkpointer.restore(
            directory, args=ocp.args.Composite(optimizer=ocp.args.JsonRestore())
        ).optimizer
        if not isinstance(saved, Mapping):
            raise ValueError(
                f"{directory} has no adam_jax optimizer fingerprint; write checkpoints with "
                "adam_jax.save_checkpoint."
            )
        current = checkpoint_fingerprint(abstract_params, abstract_state, config)
        allowed = (
            allow_changes
            if allow_changes is True
            else set([allow_changes] if isinstance(allow_changes, str) else allow_changes)
        )
        differences = _differences(saved, current, config is not None, allowed)
        if differences:
            listed = "\n  ".join(differences[:_MAX_LISTED])
            more = len(differences) - _MAX_LISTED
            raise ValueError(
                f"checkpoint {directory} was written for a different optimizer configuration "
                f"than the one given to restore_checkpoint:\n  {listed}"
                + (f"\n  ... and {more} more" if more > 0 else "")
                + "\nRestore with the optimizer (and config) the checkpoint was saved with, or "
                "name the hyperparameters you mean to change in allow_changes=."
            )
        restored = checkpointer.restore(
            directory,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params),
                opt_state=ocp.args.StandardRestore(abstract_state),
            ),
        )
    return restored.params, restored.opt_state
