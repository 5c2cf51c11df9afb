"""monitor / step_stats against statistics computed independently from tests/reference.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests import reference
from tests.helpers import run_updates

STEPS = 120


def run_stats(tx, grads_seq):
    """Stacked step_stats after every step (one jitted scan) and the stacked updates."""
    stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *grads_seq)
    params = jax.tree.map(lambda x: x[0], stacked)

    @jax.jit
    def scan(stacked_grads):
        def body(state, g):
            updates, state = tx.update(g, state, params)
            return state, (updates, adam_jax.step_stats(state))

        return jax.lax.scan(body, tx.init(params), stacked_grads)[1]

    return scan(stacked)


def numpy_moments(grads, b1, b2, infinity=False):
    """m_t and v_t (u_t with ``infinity``) of Algorithms 1 and 2, per step, in float64."""
    m, v, out = np.zeros_like(grads[0]), np.zeros_like(grads[0]), []
    for g in grads:
        m = b1 * m + (1 - b1) * g
        v = np.maximum(b2 * v, np.abs(g)) if infinity else b2 * v + (1 - b2) * g * g
        out.append((m, v))
    return out


def expected_stats(grads_seq, lr, b1, b2, near, adamax=False):
    """The StepStats of every step from the reference algorithm, flattened over both leaves."""
    keys = list(grads_seq[0])
    ref = reference.adamax if adamax else reference.adam
    steps = {k: ref([g[k] for g in grads_seq], b1=b1, b2=b2, eps=0.0) for k in keys}
    moments = {k: numpy_moments([g[k] for g in grads_seq], b1, b2, adamax) for k in keys}
    bound = lr * (1.0 if adamax else reference.step_bound(b1, b2))
    rows = []
    for t in range(1, len(grads_seq) + 1):
        delta = np.concatenate([np.abs(lr * steps[k][t - 1]).ravel() for k in keys])
        c1, c2 = 1 - b1**t, (1.0 if adamax else 1 - b2**t)
        snr = []
        for k in keys:
            m, v = moments[k][t - 1]
            scale = v if adamax else np.sqrt(v / c2)
            snr.append(
                np.where(scale > 0, np.abs(m / c1) / np.where(scale > 0, scale, 1), 0).ravel()
            )
        rows.append(
            dict(
                max_step=delta.max(),
                mean_step=delta.mean(),
                step_bound=bound,
                frac_near_bound=np.mean(delta >= near * bound),
                mean_snr=np.concatenate(snr).mean(),
                bias_correction_1=c1,
                bias_correction_2=c2,
                nonfinite_grads=0,
            )
        )
    return {name: np.array([r[name] for r in rows]) for name in rows[0]}


@pytest.mark.parametrize(
    "adamax,b1,b2,near",
    [(False, 0.9, 0.999, 0.25), (False, 0.5, 0.9, 0.9), (True, 0.9, 0.999, 0.5)],
)
def test_step_stats_match_reference(adamax, b1, b2, near):
    lr = 1e-2
    grads = reference.gradient_sequence(STEPS, dtype=np.float32)
    inner = (adam_jax.adamax if adamax else adam_jax.adam)(lr, b1=b1, b2=b2, eps=0.0)
    tx = adam_jax.monitor(inner, learning_rate=lr, b1=b1, b2=b2, near=near)
    updates, stats = run_stats(tx, grads)
    plain, _ = run_updates(inner, grads)
    for k in plain:  # the monitor leaves the updates alone
        np.testing.assert_array_equal(np.asarray(updates[k]), np.asarray(plain[k]))
    want = expected_stats(grads, lr, b1, b2, near, adamax)
    for name, value in want.items():
        got = np.asarray(stats[name])
        if name == "frac_near_bound":  # a threshold test: allow an element on the edge to flip
            counts, want_counts = np.round(got * 17), np.round(value * 17)  # 17 elements
            assert np.sum(counts != want_counts) <= 2
            assert np.all(np.abs(counts - want_counts) <= 1)
        elif name == "nonfinite_grads":
            np.testing.assert_array_equal(got, value)
        else:
            np.testing.assert_allclose(got, value, rtol=2e-5, atol=1e-30, err_msg=name)
    assert stats["frac_near_bound"].max() > 0  # the test exercises the threshold


def test_step_bound_holds_in_training_and_is_not_strict():
    """Section 2.1 on a noisy quadratic: |Delta| stays under the paper's bound. Geometrically
    growing gradients break it, but never the Cauchy-Schwarz bound (reference.strict_step_bound)."""
    lr, b1, b2 = 1e-2, 0.9, 0.999
    tx = adam_jax.monitor(adam_jax.adam(lr, b1, b2, eps=0.0), learning_rate=lr, b1=b1, b2=b2)
    rng = np.random.default_rng(0)
    target, noise = rng.normal(size=50), rng.normal(size=(300, 50))

    @jax.jit
    def train(params):
        def body(carry, n):
            p, state = carry
            g = p - target + n  # grad of |p - target|^2 / 2, plus noise
            updates, state = tx.update(g, state, p)
            return (p + updates, state), adam_jax.step_stats(state)

        return jax.lax.scan(body, (params, tx.init(params)), noise)[1]

    stats = train(jnp.zeros(50))
    assert np.all(stats["max_step"] <= stats["step_bound"])
    assert np.all(np.asarray(stats["mean_snr"])[-50:] < np.asarray(stats["mean_snr"])[:10].mean())

    # |g_t| = 1.5^t with b1 = 0.5, b2 = 0.9: m_hat/sqrt(v_hat) -> 1.16 * (1-b1)/sqrt(1-b2).
    b1, b2 = 0.5, 0.9
    tx = adam_jax.monitor(adam_jax.adam(lr, b1, b2, eps=0.0), learning_rate=lr, b1=b1, b2=b2)
    growing = [{"w": np.full(3, 1.5**t, np.float32)} for t in range(40)]
    _, stats = run_stats(tx, growing)
    strict = lr * np.array([reference.strict_step_bound(b1, b2, t) for t in range(1, 41)])
    assert np.any(stats["max_step"] > stats["step_bound"] * 1.01)
    assert np.all(stats["max_step"] <= strict * (1 + 1e-5))


def test_hyperparameters_read_from_inject_hyperparams_with_schedule():
    schedule = optax.linear_schedule(1e-1, 1e-2, 10)
    tx = adam_jax.monitor(optax.inject_hyperparams(optax.adam)(learning_rate=schedule, b1=0.8))
    grads = reference.gradient_sequence(12, dtype=np.float32)
    _, stats = run_stats(tx, grads)
    t = np.arange(1, 13)
    alpha = np.array([float(schedule(i - 1)) for i in t])
    np.testing.assert_allclose(
        stats["step_bound"], alpha * reference.step_bound(0.8, 0.999), rtol=2e-5
    )
    np.testing.assert_allclose(stats["bias_correction_1"], 1 - 0.8**t, rtol=1e-6)
    np.testing.assert_allclose(stats["bias_correction_2"], 1 - 0.999**t, rtol=1e-4)


def test_explicit_schedule_and_nonfinite_gradients():
    schedule = optax.exponential_decay(1.0, 1, 0.5)
    tx = adam_jax.monitor(adam_jax.adamax(schedule), learning_rate=schedule, b1=0.9)
    grads = [{"w": np.array([1.0, np.nan, np.inf, 2.0], np.float32)}] * 3
    _, stats = run_stats(tx, grads)
    np.testing.assert_array_equal(stats["nonfinite_grads"], [2, 2, 2])
    np.testing.assert_array_equal(stats["step"], [1, 2, 3])
    np.testing.assert_allclose(stats["step_bound"], [1.0, 0.5, 0.25])
    np.testing.assert_array_equal(stats["bias_correction_2"], 1.0)


def test_nonfinite_grads_counted_around_apply_if_finite():
    """The Reliability recipe: the guard skips the step, the monitor says why."""
    guarded = optax.apply_if_finite(adam_jax.adam(1e-3), max_consecutive_errors=5)
    tx = adam_jax.monitor(guarded, learning_rate=1e-3, b1=0.9, b2=0.999)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    updates, state = jax.jit(tx.update)({"w": jnp.array([1.0, jnp.nan, jnp.inf])}, state, params)
    np.testing.assert_array_equal(np.asarray(updates["w"]), 0.0)
    assert int(adam_jax.step_stats(state)["nonfinite_grads"]) == 2
    assert int(state.inner_state.total_notfinite) == 1


def test_monitor_errors():
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="ScaleByAdamState or ScaleByAdamaxState"):
        adam_jax.monitor(optax.sgd(0.1), learning_rate=0.1, b1=0.9, b2=0.9).init(params)
    with pytest.raises(ValueError, match="cannot find learning_rate, b1"):
        adam_jax.monitor(adam_jax.adam(), b2=0.999).init(params)
    with pytest.raises(ValueError, match="near="):
        adam_jax.monitor(adam_jax.adam(), near=0.0)
    with pytest.raises(ValueError, match="b2="):
        adam_jax.monitor(adam_jax.adam(), b2=1.0)
    with pytest.raises(ValueError, match="exactly one MonitorState"):
        adam_jax.step_stats(adam_jax.adam().init(params))
