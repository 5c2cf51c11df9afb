"""Checkpoints of Flax NNX training state: put a restored ``(params, opt_state)`` back.

``nnx.Optimizer`` keeps the optimizer state inside Flax variables, so the state a user sees
(``nnx.state(optimizer)``) has Flax's structure, not the optimizer's. adam_jax checkpoints hold
plain arrays in the optimizer's structure; save and resume as::

    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    adam_jax.save_checkpoint(path, params, nnx.as_pure(optimizer.opt_state))
    # ... and to resume:
    params, opt_state = adam_jax.restore_checkpoint(path, tx, params)
    adam_jax.load_into_nnx(model, optimizer, params, opt_state)

Flax is imported only when :func:`load_into_nnx` runs.
"""

from __future__ import annotations

from typing import Any

import jax

from adam_jax import _hyperparams

PyTree = Any


def load_into_nnx(model: Any, optimizer: Any, params: PyTree, opt_state: PyTree) -> None:
    """Write restored ``params`` into ``model``'s ``nnx.Param`` variables and ``opt_state`` into
    ``optimizer`` (an ``nnx.Optimizer`` over ``model``), in place.

    Args:
      model: the ``nnx.Module`` whose parameters were saved (as ``nnx.to_pure_dict``).
      optimizer: its ``nnx.Optimizer``, built with the optimizer ``tx`` given to
        :func:`adam_jax.restore_checkpoint`.
      params, opt_state: what :func:`adam_jax.restore_checkpoint` returned.

    The optimizer's own step counter (``optimizer.step``) is set to the Adam/AdaMax step count.

    Raises:
      ValueError: ``opt_state`` does not have as many arrays as ``optimizer.opt_state`` (the
        optimizer was built with another ``tx``).
    """
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    is_variable = lambda x: isinstance(x, nnx.Variable)
    variables = jax.tree.leaves(optimizer.opt_state, is_leaf=is_variable)
    values = jax.tree.leaves(opt_state)
    if len(variables) != len(values):
        raise ValueError(
            f"load_into_nnx: optimizer.opt_state holds {len(variables)} arrays, opt_state "
            f"{len(values)}: build the nnx.Optimizer with the tx given to restore_checkpoint."
        )
    for variable, value in zip(variables, values, strict=True):
        variable.set_value(value)
    found = _hyperparams.records(opt_state)
    if found:
        optimizer.step.set_value(found[0][1].count.astype(optimizer.step.get_value().dtype))
