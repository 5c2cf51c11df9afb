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

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from adam_jax import _hyperparams, _tree, _validate, state_nodes
from adam_jax.transforms import ScaleByAdamaxState, ScaleByAdamState

_ADAM_STATES = (ScaleByAdamState, ScaleByAdamaxState, optax.ScaleByAdamState)
_MAX_EVERY = 2**31 - 1


class StepStats(NamedTuple):
    """Scalars describing the last step (all zero before the first)."""

    max_step: jax.Array  # max |update| over all parameters
    mean_step: jax.Array  # mean |update|
    step_bound: jax.Array  # Section 2.1 bound for the step's alpha, b1, b2 (alpha for AdaMax)
    frac_near_bound: jax.Array  # fraction of elements with |update| >= near * step_bound
    mean_snr: jax.Array  # mean |m_hat|/sqrt(v_hat) (|m_hat|/u_t for AdaMax), 0 where v = 0;
    # 8-bit moments (quantized_moments) are decoded first
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
    if _validate.is_concrete_number(b1) and _validate.is_concrete_number(b2):  # float64 math
        root = math.sqrt(1 - float(b2))
        return jnp.asarray((1 - float(b1)) / root if 1 - float(b1) > root else 1.0, jnp.float32)
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
    every: int = 10,
) -> optax.GradientTransformation:
    r"""Wrap ``tx`` (containing one Adam or AdaMax) to record :class:`StepStats` of its steps.

    The updates pass through unchanged. After an update the monitor reads the inner state's step
    count ``t`` and moments ``m_t, v_t`` (or ``u_t``) and computes, for the final updates
    ``Delta_t``::

        max_step = max |Delta_t|,   mean_step = mean |Delta_t|
        step_bound = alpha_t * ((1-b1)/sqrt(1-b2) if (1-b1) > sqrt(1-b2) else 1)   (AdaMax: alpha_t)
        frac_near_bound = mean(|Delta_t| >= near * step_bound)
        mean_snr = mean |m_t/(1-b1^t)| / sqrt(v_t/(1-b2^t))
        bias_correction_1 = 1 - b1^t,  bias_correction_2 = 1 - b2^t
        nonfinite_grads = number of non-finite gradient elements

    Read them with :func:`step_stats`. ``alpha_t``, ``b1`` and ``b2`` are read from the optimizer:
    every adam_jax constructor (``adam``, ``adamw``, ``adamax``, ``scale_by_adam``,
    ``scale_by_adamax``, the ``compat`` presets) records its hyperparameters in its state
    (:func:`adam_jax.hyperparams`), and values injected with ``optax.inject_hyperparams`` are read
    from the injected state at every step, so changing them never recompiles. A schedule
    ``learning_rate`` is evaluated at ``t - 1``, as ``optax.scale_by_learning_rate`` does. A bare
    rescaler has no learning rate: ``step_bound`` and ``max_step`` are then in units of alpha
    (``alpha_t = 1``). With ``b1_decay`` != 1 the bias corrections shown are those of a constant
    ``b1``. The step statistics are over the parameters the Adam state trains: leaves frozen by
    ``optax.masked`` or ``optax.partition`` are left out.

    Args:
      tx: the transformation to watch; its state must hold exactly one ``ScaleByAdamState`` or
        ``ScaleByAdamaxState`` (adam_jax's, or optax's ``ScaleByAdamState``).
      learning_rate, b1, b2: leave ``None``. Only for an optimizer that records none (optax's own
        ``adam``) give them here; a value that contradicts the recorded one raises.
      near: the fraction of the bound counted as "near" it, in (0, 1].
      every: compute the statistics at steps t = 1, 1 + every, 1 + 2*every, ... only, and keep
        the last ones in between (``step`` says which step they describe). The statistics that
        are computed are exact. The default, 10, keeps the monitor cheap enough to leave on;
        1 computes them at every step, which costs a step a good deal more (the reductions
        read every update and moment once more). ``python benchmarks/monitor_overhead.py``
        measures both.

    Raises:
      ValueError: at ``init`` if the state holds no Adam/AdaMax state, a needed hyperparameter is
        neither recorded nor given, or a given one contradicts the recorded one (naming both).
    """
    _validate.check_transformation("tx", tx)
    if learning_rate is not None:
        _validate.check_learning_rate(learning_rate)
    if b1 is not None:
        _validate.check_decay("b1", b1)
    if b2 is not None:
        _validate.check_decay("b2", b2)
    _validate.check_interval("near", near, 0.0, 1.0, low_open=True, high_open=False)
    _validate.check_positive_int("every", every)
    if every > _MAX_EVERY:  # the step count is int32
        raise ValueError(
            f"every={every!r} is out of range: the step count is int32, so every must be at most "
            f"{_MAX_EVERY}."
        )
    given = {"learning_rate": learning_rate, "b1": b1, "b2": b2}

    def hyperparameters(inner_state: optax.OptState, adam_state: Any) -> tuple[Any, Any, Any]:
        """(alpha_t, b1, b2) for the step just taken: recorded, injected, or given."""
        found, injected = _recorded(inner_state, adam_state)
        is_adamax = isinstance(adam_state, ScaleByAdamaxState)
        values = {name: _settle(name, given[name], found, injected) for name in given}
        if values["learning_rate"] is None and _hyperparams.has_record(adam_state):
            values["learning_rate"] = 1.0  # a bare rescaler: statistics in units of alpha
        if is_adamax and values["b2"] is None:
            values["b2"] = 0.0  # unused: u_t needs no bias correction
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise ValueError(
                f"monitor: cannot find {', '.join(missing)} in the optimizer: build it with "
                "adam_jax (which records its hyperparameters), inject them with "
                "optax.inject_hyperparams, or pass them to monitor(...)."
            )
        lr = values["learning_rate"]  # a record holds the rate of the step just taken
        if callable(lr):  # given to monitor(...)
            lr = lr(adam_state.count - 1)  # optax.scale_by_learning_rate: schedule(t - 1)
        return lr, values["b1"], values["b2"]

    def init_fn(params: optax.Params) -> MonitorState:
        inner_state = tx.init(params)
        adam_state = _tree.find_state(inner_state, _ADAM_STATES, "monitor")
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
        inner_update = optax.with_extra_args_support(tx).update
        updates, inner_state = inner_update(grads, state.inner_state, params, **extra)
        adam_state = _tree.find_state(inner_state, _ADAM_STATES, "monitor")
        lr, beta1, beta2 = hyperparameters(inner_state, adam_state)
        if every == 1:
            stats = _stats(grads, updates, adam_state, lr, beta1, beta2, near)
        else:

            def compute() -> StepStats:
                # The step is taken again inside the branch, from operands that exist anyway
                # (gradients, the state before the step, params): handing it the step's own
                # updates would force XLA to write them out at every step.
                again, inner_again = inner_update(grads, state.inner_state, params, **extra)
                adam_again = _tree.find_state(inner_again, _ADAM_STATES, "monitor")
                return _stats(grads, again, adam_again, lr, beta1, beta2, near)

            due = (adam_state.count - 1) % every == 0  # t = 1, 1 + every, 1 + 2 every, ...
            stats = jax.lax.cond(due, compute, lambda: state.stats)
        return updates, MonitorState(inner_state=inner_state, stats=stats)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _recorded(inner_state: optax.OptState, adam_state: Any) -> tuple[dict, set[str]]:
    """The hyperparameters the state holds for ``adam_state`` (its record, injected values read
    live) and the names injected with ``optax.inject_hyperparams``; for an optimizer without a
    record (optax's), whatever was injected."""
    for _, node, found, injected in _hyperparams.records(inner_state):
        if node is adam_state:
            resolved = {
                n: _hyperparams.as_number(v)
                for n, v in _hyperparams.resolve(found, injected).items()
            }
            live = {n for n in resolved if _hyperparams.injected_value(n, injected) is not None}
            return resolved, live
    injected = _hyperparams.all_injected(inner_state)
    return injected, set(injected)


def _same(given: Any, have: Any, samples: Any) -> bool:
    """Equal as hyperparameters: numbers to float32 rounding; a schedule by its values at
    ``SCHEDULE_STEPS`` against the recorded ones (``samples``, ``None`` for a constant)."""
    if callable(given):
        return samples is not None and bool(
            np.allclose(_hyperparams.schedule_samples(given), np.asarray(samples), rtol=1e-6)
        )
    return samples is None and math.isclose(
        float(np.float32(given)), float(have), rel_tol=1e-6, abs_tol=0.0
    )


def _settle(name: str, given: Any, found: dict[str, Any], injected: set[str]) -> Any:
    """The value of ``name`` the statistics use: the optimizer's; ``given`` only where the
    optimizer has none, and a ``given`` that contradicts it is an error naming both."""
    have = found.get(name)
    if given is None:
        return have
    if have is None:
        return given
    if name in injected:
        raise ValueError(
            f"monitor: {name}={given!r} was passed, but the optimizer's {name} is injected with "
            f"optax.inject_hyperparams and read from its state at every step: leave {name} out."
        )
    if isinstance(have, jax.core.Tracer):  # compared at init, where the record is concrete
        return have
    if not _same(given, have, found.get(name + "_schedule")):
        shown = "a schedule" if name + "_schedule" in found else repr(float(have))
        raise ValueError(
            f"monitor: {name}={given!r} was passed, but the optimizer was built with "
            f"{name}={shown}: leave {name} out (the monitor reads it from the optimizer)."
        )
    return have


def _trained(updates: optax.Updates, mu: Any, grads: optax.Updates) -> optax.Updates:
    """The updates of the parameters the Adam state updates. Left out: leaves whose update is
    the gradient itself (``optax.masked`` hands masked-out gradients through untouched), and
    leaves where the moments hold ``optax.MaskedNode`` (frozen by ``optax.masked`` or
    ``optax.partition``, when the moments are laid out like the updates)."""
    updates = jax.tree.map(lambda u, g: None if u is g else u, updates, grads)
    stop = state_nodes.stands_for_one_param
    try:
        return jax.tree.map(
            lambda m, u: None if isinstance(m, optax.MaskedNode) else u,
            mu,
            updates,
            is_leaf=lambda x: stop(x) or x is None,
        )
    except ValueError:  # moments in another layout (flat_moments)
        return updates


def _stats(
    grads: optax.Updates,
    updates: optax.Updates,
    adam_state: Any,
    lr: ArrayLike,
    b1: ArrayLike,
    b2: ArrayLike,
    near: float,
) -> StepStats:
    """The Section 2.1 quantities of one step, reduced to float32 scalars (int32 counts).

    Every input is read in float32 whatever its dtype (float16 to float64), and each quantity is
    a plain reduction over raveled leaves: on CPU a ``lax.cond`` that skips a pass when its answer
    is known costs more than the pass (measured with ``benchmarks/monitor_overhead.py``).
    """
    f32 = jnp.float32
    t = adam_state.count
    is_adamax = isinstance(adam_state, ScaleByAdamaxState)
    c1 = _tree.debiasing(b1, t).astype(f32)  # Sec. 3: 1 - b1^t
    c2 = jnp.ones([], f32) if is_adamax else _tree.debiasing(b2, t).astype(f32)  # 1 - b2^t
    bound = jnp.asarray(lr, f32) * (jnp.ones([], f32) if is_adamax else paper_step_bound(b1, b2))
    threshold = near * bound

    # |m_hat|/sqrt(v_hat) = |m| * rsqrt(v) * sqrt(c2)/c1 (|m_hat|/u_t = |m|/u * 1/c1 for AdaMax);
    # before the first step (t = 0, e.g. skipped by apply_if_finite) m = 0 and c1 = 0: SNR 0.
    safe_c1 = jnp.where(c1 > 0, c1, 1.0)
    snr_factor = jnp.where(c1 > 0, (1 / safe_c1) if is_adamax else jnp.sqrt(c2) / safe_c1, 0.0)
    # 1-D views: XLA:CPU reduces a raveled array several times faster than a 2-D one. Moments
    # stored in 8 bits (quantized_moments) are decoded to m_t, v_t first.
    us, ms, vs, gs = (
        [jnp.ravel(x) for x in jax.tree.leaves(tree)]
        for tree in (
            _trained(updates, adam_state.mu, grads),
            state_nodes.values(adam_state.mu),
            state_nodes.values(adam_state.nu),
            grads,
        )
    )
    size = max(1, sum(u.size for u in us))
    zero = jnp.zeros([], f32)

    def total(parts: list[jax.Array]) -> jax.Array:
        return sum(parts, zero)

    def snr_sum(m: jax.Array, v: jax.Array) -> jax.Array:
        v = v.astype(f32)
        inv_scale = 1 / v if is_adamax else jax.lax.rsqrt(v)
        return jnp.sum(jnp.where(v > 0, jnp.abs(m).astype(f32) * inv_scale, zero))

    def count(flags: jax.Array) -> jax.Array:
        # A float32 sum (exact up to 2^24 elements a leaf): XLA:CPU sums float32 in one fast pass
        # but an int32 sum as a slower tree of reduce-windows over a converted copy.
        return jnp.sum(jnp.where(flags, 1.0, 0.0).astype(f32))

    mean_snr = total([snr_sum(m, v) for m, v in zip(ms, vs, strict=True)]) * snr_factor / size
    abs_us = [jnp.abs(u).astype(f32) for u in us]
    return StepStats(
        max_step=jnp.max(jnp.stack([jnp.max(a, initial=zero) for a in abs_us] + [zero])),
        mean_step=total([jnp.sum(a) for a in abs_us]) / size,
        step_bound=bound,
        frac_near_bound=total([count(a >= threshold) for a in abs_us]) / size,
        mean_snr=mean_snr,
        bias_correction_1=c1,
        bias_correction_2=c2,
        nonfinite_grads=total([count(~jnp.isfinite(g)) for g in gs]).astype(jnp.int32),
        step=adam_state.count.astype(jnp.int32),
    )


def step_stats(opt_state: optax.OptState) -> dict[str, jax.Array]:
    """The :class:`StepStats` of the last step as a dict of scalars (works under ``jit``).

    ``opt_state`` is the state of :func:`monitor`, or of any transformation containing exactly one.
    """
    state = _tree.find_state(opt_state, MonitorState, "step_stats")
    return dict(state.stats._asdict())
