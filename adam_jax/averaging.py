"""Temporal averaging of the parameters (Section 7.2 of Kingma & Ba, 2015).

An exponential moving average of the iterates often generalises better than the last iterate::

    theta_bar_t = decay * theta_bar_{t-1} + (1 - decay) * theta_t,     theta_bar_0 = 0
    theta_hat_t = theta_bar_t / (1 - decay^t)                           (zero-bias correction)

:func:`temporal_averaging` keeps ``theta_bar_t`` in the optimizer state and passes the updates
through unchanged; :func:`averaged_params` reads ``theta_hat_t`` back from anywhere in a chain's state.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from adam_jax import _checks, _tree, _validate


class TemporalAveragingState(NamedTuple):
    """State of :func:`temporal_averaging`."""

    count: jax.Array  # t, int32, saturating
    average: optax.Params  # theta_bar_t, at least float32
    correction: jax.Array  # 1 - decay^t with debias=True, 1 without; float32 or wider


def temporal_averaging(
    decay: ArrayLike = 0.999, *, debias: bool = True
) -> optax.GradientTransformation:
    r"""Keep the Section 7.2 moving average of the parameters *after* each update.

    Place it last in a chain: it sees the final ``updates`` and the parameters before the step,
    so ``theta_t = params + updates`` and::

        theta_bar_t = decay * theta_bar_{t-1} + (1 - decay) * theta_t,   theta_bar_0 = 0

    The updates come out unchanged; read the average with :func:`averaged_params`, which returns
    ``theta_bar_t / (1 - decay^t)`` (or ``theta_bar_t`` with ``debias=False``).

    The paper writes the decay as :math:`\beta_2`; any decay in [0, 1) is allowed. The average is
    stored in the parameter's dtype promoted to at least float32, so a float16/bfloat16 model keeps
    a float32 average (a decay of 0.999 would otherwise round ``(1-decay)*theta`` away).

    Args:
      decay: the decay of the average, in [0, 1).
      debias: divide by ``1 - decay^t`` when the average is read (Section 3's correction).

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`TemporalAveragingState`; its
      ``update`` requires ``params``.
    """
    _validate.check_decay("decay", decay)
    _validate.check_flag("debias", debias)

    def init_fn(params: optax.Params) -> TemporalAveragingState:
        _checks.check_float_leaves("temporal_averaging", "parameter", params)
        average = _tree.zeros_like(params, lambda d: _tree.moment_dtype(d, None, real=False))
        return TemporalAveragingState(
            count=jnp.zeros([], jnp.int32),
            average=average,
            correction=jnp.zeros([], _tree.compute_dtype(*_dtypes(average))),
        )

    def update_fn(
        updates: optax.Updates,
        state: TemporalAveragingState,
        params: optax.Params | None = None,
    ) -> tuple[optax.Updates, TemporalAveragingState]:
        _checks.check_state_type("temporal_averaging", state, TemporalAveragingState)
        if params is None:
            raise ValueError(
                "temporal_averaging needs the parameters: call tx.update(grads, state, params)."
            )
        t = _tree.increment(state.count)
        theta = jax.tree.map(  # Sec. 7.2: theta_t = theta_{t-1} + update
            lambda p, u, a: jnp.asarray(p, a.dtype) + jnp.asarray(u, a.dtype),
            params,
            updates,
            state.average,
        )
        average = _tree.update_moment(theta, state.average, decay, 1)  # Sec. 7.2: theta_bar_t
        correction = _tree.debiasing(decay, t) if debias else 1.0  # Sec. 3: 1 - decay^t
        new_state = TemporalAveragingState(
            count=t,
            average=_tree.cast_like(average, state.average),
            correction=jnp.asarray(correction, state.correction.dtype),
        )
        return updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _dtypes(tree: optax.Params) -> list[jnp.dtype]:
    return [jnp.result_type(x) for x in jax.tree.leaves(tree)]


def averaged_params(opt_state: optax.OptState) -> optax.Params:
    """The averaged parameters ``theta_bar_t / (1 - decay^t)`` of Section 7.2.

    ``opt_state`` is the state of any transformation containing exactly one
    :func:`temporal_averaging` (for example ``optax.chain(adam_jax.adam(1e-3),
    temporal_averaging(0.999))``), found at any depth. With ``debias=False`` the raw
    ``theta_bar_t`` is returned. Before the first update the average is ``theta_bar_0 = 0``.
    The leaves have the state's dtype (the parameter dtype, at least float32).

    Raises:
      ValueError: if ``opt_state`` holds no :class:`TemporalAveragingState`, or more than one.
    """
    state = _tree.find_state(opt_state, TemporalAveragingState, "averaged_params")
    correction = state.correction
    return jax.tree.map(
        lambda a: _tree.safe_divide(a, correction.astype(jnp.finfo(a.dtype).dtype)), state.average
    )
