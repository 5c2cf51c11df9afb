"""Step statistics of Adam and AdaMax: Section 2.1 of Kingma & Ba (2015) made visible.

With eps = 0 Adam's step is ``Delta_t = alpha * m_hat_t / sqrt(v_hat_t)``. Section 2.1 states

    |Delta_t| <= alpha * (1 - b1) / sqrt(1 - b2)   if (1 - b1) > sqrt(1 - b2)   (the sparse case)
    |Delta_t| <= alpha                             otherwise,

so alpha acts as a trust region, and calls ``m_hat / sqrt(v_hat)`` the signal-to-noise ratio (SNR).
AdaMax's step obeys ``|Delta_t| <= alpha`` exactly (Section 7.1).

The paper's bound is a typical-case statement, not a theorem for every sequence: gradients that
grow geometrically (|g_t| = c^t, c > 1) can exceed it. A bound valid for every sequence
follows from Cauchy-Schwarz, ``(1-b1)/sqrt(1-b2) * sqrt(sum_{k<t} (b1^2/b2)^k) * sqrt(1-b2^t)/(1-b1^t)``
(``tests/reference.py: strict_step_bound``). ``step_bound`` reports the paper's bound; the fraction
of elements near it (``frac_near_bound``) shows how often training presses against it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from adam_jax import _validate
from adam_jax.averaging import find_state
from adam_jax.transforms import ScaleByAdamaxState, ScaleByAdamState

_ADAM_STATES = (ScaleByAdamState, ScaleByAdamaxState, optax.ScaleByAdamState)
_INJECTED_STATES = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)


class StepStats(NamedTuple):
    """Scalars describing the last step (all zero before the first)."""

    max_step: jax.Array  # max |update| over all parameters
    mean_step: jax.Array  # mean |update|
    step_bound: jax.Array  # Section 2.1 bound for the step's alpha, b1, b2 (alpha for AdaMax)
    frac_near_bound: jax.Array  # fraction of elements with |update| >= near * step_bound
    mean_snr: jax.Array  # mean |m_hat|/sqrt(v_hat) (|m_hat|/u_t for AdaMax), 0 where v = 0
    bias_correction_1: jax.Array  # 1 - b1^t
    bias_correction_2: jax.Array  # 1 - b2^t (1 for AdaMax, whose u_t needs none)
    nonfinite_grads: jax.Array  # number of NaN/Inf gradient elements, int32
    step: jax.Array  # t of the step described (0 before the first), int32


class MonitorState(NamedTuple):
    """State of :func:`monitor`: the wrapped transformation's state and the last step's stats."""

    inner_state: optax.OptState
    stats: StepStats


def paper_step_bound(b1: ArrayLike, b2: ArrayLike) -> jax.Array:
    """|Delta_t|/alpha of Section 2.1: (1-b1)/sqrt(1-b2) if (1-b1) > sqrt(1-b2), else 1."""
    b1 = jnp.asarray(b1, jnp.float32)
    root = jnp.sqrt(1 - jnp.asarray(b2, jnp.float32))
    return jnp.where(1 - b1 > root, (1 - b1) / root, 1.0)


def monitor(
    tx: optax.GradientTransformation,
    *,
    learning_rate: optax.ScalarOrSchedule | None = None,
    b1: ArrayLike | None = None,
    b2: ArrayLike | None = None,
    near: float = 0.9,
) -> optax.GradientTransformation:
    r"""Wrap ``tx`` (containing one Adam or AdaMax) to record :class:`StepStats` for every step.

    The updates pass through unchanged. After each update the monitor reads the inner state's
    step count ``t`` and moments ``m_t, v_t`` (or ``u_t``) and computes, for the final updates
    ``Delta_t``::

        max_step = max |Delta_t|,   mean_step = mean |Delta_t|
        step_bound = alpha_t * ((1-b1)/sqrt(1-b2) if (1-b1) > sqrt(1-b2) else 1)   (AdaMax: alpha_t)
        frac_near_bound = mean(|Delta_t| >= near * step_bound)
        mean_snr = mean |m_t/(1-b1^t)| / sqrt(v_t/(1-b2^t))
        bias_correction_1 = 1 - b1^t,  bias_correction_2 = 1 - b2^t
        nonfinite_grads = number of non-finite gradient elements

    Read them with :func:`step_stats`. The statistics need ``alpha_t``, ``b1`` and ``b2``, which an
    ``optax.GradientTransformation`` does not expose: pass them here, or build ``tx`` with
    ``optax.inject_hyperparams`` (e.g. ``inject_hyperparams(adam_jax.adam)(learning_rate=...)``)
    and leave them ``None``: they are then read from the injected hyperparameters of each step
    (names ``learning_rate`` or ``lr``, ``b1``, ``b2``). A schedule ``learning_rate`` is evaluated
    at ``t - 1``, as ``optax.scale_by_learning_rate`` does. With ``b1_decay`` != 1 the bias
    corrections shown are those of a constant ``b1``.

    Args:
      tx: the transformation to watch; its state must hold exactly one ``ScaleByAdamState`` or
        ``ScaleByAdamaxState`` (adam_jax's, or optax's ``ScaleByAdamState``).
      learning_rate: alpha (a number or a schedule), or ``None`` to read it from the state.
      b1, b2: Adam's decays, or ``None`` to read them from the state (b2 unused for AdaMax).
      near: the fraction of the bound counted as "near" it, in (0, 1].

    Raises:
      ValueError: at ``init`` if the state holds no Adam/AdaMax state or a needed hyperparameter is
        neither given nor injected.
    """
    if learning_rate is not None:
        _validate.check_learning_rate(learning_rate)
    if b1 is not None:
        _validate.check_decay("b1", b1)
    if b2 is not None:
        _validate.check_decay("b2", b2)
    _validate.check_interval("near", near, 0.0, 1.0, low_open=True, high_open=False)

    def hyperparameters(inner_state: optax.OptState, adam_state: Any) -> tuple[Any, Any, Any]:
        """(alpha_t, b1, b2) for the step just taken, given or read from injected state."""
        injected = [
            s
            for s in jax.tree.leaves(inner_state, is_leaf=lambda x: isinstance(x, _INJECTED_STATES))
            if isinstance(s, _INJECTED_STATES)
        ]
        found: dict[str, Any] = {}
        for s in injected:
            found.update(s.hyperparams)
        is_adamax = isinstance(adam_state, ScaleByAdamaxState)
        lr = (
            learning_rate
            if learning_rate is not None
            else found.get("learning_rate", found.get("lr"))
        )
        beta1 = b1 if b1 is not None else found.get("b1")
        beta2 = b2 if b2 is not None else found.get("b2", 0.0 if is_adamax else None)
        missing = [n for n, v in [("learning_rate", lr), ("b1", beta1), ("b2", beta2)] if v is None]
        if missing:
            raise ValueError(
                f"monitor: cannot find {', '.join(missing)}: pass them to monitor(...) or build "
                "the transformation with optax.inject_hyperparams."
            )
        if callable(lr):
            lr = lr(adam_state.count - 1)  # optax.scale_by_learning_rate: schedule(t - 1)
        return lr, beta1, beta2

    def init_fn(params: optax.Params) -> MonitorState:
        inner_state = tx.init(params)
        adam_state = find_state(inner_state, _ADAM_STATES, "monitor")
        hyperparameters(inner_state, adam_state)  # fail now, not inside the first jitted step
        zero = jnp.zeros([], jnp.float32)
        izero = jnp.zeros([], jnp.int32)
        stats = StepStats(*([zero] * 7), nonfinite_grads=izero, step=izero)
        return MonitorState(inner_state=inner_state, stats=stats)

    def update_fn(
        updates: optax.Updates,
        state: MonitorState,
        params: optax.Params | None = None,
        **extra: Any,
    ) -> tuple[optax.Updates, MonitorState]:
        grads = updates
        updates, inner_state = optax.with_extra_args_support(tx).update(
            grads, state.inner_state, params, **extra
        )
        adam_state = find_state(inner_state, _ADAM_STATES, "monitor")
        lr, beta1, beta2 = hyperparameters(inner_state, adam_state)
        stats = _stats(grads, updates, adam_state, lr, beta1, beta2, near)
        return updates, MonitorState(inner_state=inner_state, stats=stats)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _stats(
    grads: optax.Updates,
    updates: optax.Updates,
    adam_state: Any,
    lr: ArrayLike,
    b1: ArrayLike,
    b2: ArrayLike,
    near: float,
) -> StepStats:
    """The Section 2.1 quantities of one step, reduced to float32 scalars."""
    f32 = jnp.float32
    t = adam_state.count.astype(f32)
    is_adamax = isinstance(adam_state, ScaleByAdamaxState)
    c1 = 1 - jnp.asarray(b1, f32) ** t  # Sec. 3: 1 - b1^t
    c2 = jnp.ones([], f32) if is_adamax else 1 - jnp.asarray(b2, f32) ** t  # Sec. 3: 1 - b2^t
    bound = jnp.asarray(lr, f32) * (jnp.ones([], f32) if is_adamax else paper_step_bound(b1, b2))
    threshold = near * bound

    # |m_hat|/sqrt(v_hat) = |m| * rsqrt(v) * sqrt(c2)/c1 (|m_hat|/u_t = |m|/u * 1/c1 for AdaMax)
    snr_factor = (1 / c1) if is_adamax else jnp.sqrt(c2) / c1
    # 1-D views: XLA:CPU reduces a raveled array several times faster than a 2-D one.
    us, ms, vs, gs = (
        [jnp.ravel(x) for x in jax.tree.leaves(tree)]
        for tree in (updates, adam_state.mu, adam_state.nu, grads)
    )
    size = sum(u.size for u in us)

    def snr_sum(m: jax.Array, v: jax.Array) -> jax.Array:
        v = v.astype(f32)
        inv_scale = 1 / v if is_adamax else jax.lax.rsqrt(v)
        return jnp.sum(jnp.where(v > 0, jnp.abs(m).astype(f32) * inv_scale, 0.0))

    abs_us = [jnp.abs(u).astype(f32) for u in us]
    max_step = jnp.max(jnp.stack([jnp.max(a, initial=0.0) for a in abs_us]))

    # Counting needs an extra pass over every element; take it only when the answer can be
    # non-zero (some |update| reaches the threshold; the sum of the gradients is not finite).
    def count_near() -> jax.Array:
        return sum(jnp.sum(jnp.where(a >= threshold, 1.0, 0.0)) for a in abs_us)

    def count_nonfinite() -> jax.Array:
        return sum(jnp.sum(jnp.where(jnp.isfinite(g), 0.0, 1.0)) for g in gs)

    zero = jnp.zeros([], f32)
    near_count = jax.lax.cond(max_step >= threshold, count_near, lambda: zero)
    grad_sum = sum(jnp.sum(g) for g in gs)
    nonfinite = jax.lax.cond(jnp.isfinite(grad_sum), lambda: zero, count_nonfinite)
    return StepStats(
        max_step=max_step,
        mean_step=sum(jnp.sum(a) for a in abs_us) / size,
        step_bound=bound,
        frac_near_bound=near_count / size,
        mean_snr=sum(snr_sum(m, v) for m, v in zip(ms, vs, strict=True)) * snr_factor / size,
        bias_correction_1=c1,
        bias_correction_2=c2,
        nonfinite_grads=nonfinite.astype(jnp.int32),
        step=adam_state.count.astype(jnp.int32),
    )


def step_stats(opt_state: optax.OptState) -> dict[str, jax.Array]:
    """The :class:`StepStats` of the last step as a dict of scalars (works under ``jit``).

    ``opt_state`` is the state of :func:`monitor`, or of any transformation containing exactly one.
    """
    state = find_state(opt_state, MonitorState, "step_stats")
    return dict(state.stats._asdict())
