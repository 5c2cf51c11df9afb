"""monitor / step_stats against statistics computed independently from tests/reference.py."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import compat
from tests import reference
from tests.helpers import run_updates

# Most tests compare the statistics of every step: the monitor computing them at every step.
monitor = functools.partial(adam_jax.monitor, every=1)

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
    tx = monitor(inner, near=near)  # hyperparameters read from the optimizer
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
    tx = monitor(adam_jax.adam(lr, b1, b2, eps=0.0))
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
    tx = monitor(adam_jax.adam(lr, b1, b2, eps=0.0))
    growing = [{"w": np.full(3, 1.5**t, np.float32)} for t in range(40)]
    _, stats = run_stats(tx, growing)
    strict = lr * np.array([reference.strict_step_bound(b1, b2, t) for t in range(1, 41)])
    assert np.any(stats["max_step"] > stats["step_bound"] * 1.01)
    assert np.all(stats["max_step"] <= strict * (1 + 1e-5))


def test_hyperparameters_read_from_inject_hyperparams_with_schedule():
    schedule = optax.linear_schedule(1e-1, 1e-2, 10)
    tx = monitor(optax.inject_hyperparams(optax.adam)(learning_rate=schedule, b1=0.8))
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
    tx = monitor(adam_jax.adamax(schedule))
    grads = [{"w": np.array([1.0, np.nan, np.inf, 2.0], np.float32)}] * 3
    _, stats = run_stats(tx, grads)
    np.testing.assert_array_equal(stats["nonfinite_grads"], [2, 2, 2])
    np.testing.assert_array_equal(stats["step"], [1, 2, 3])
    np.testing.assert_allclose(stats["step_bound"], [1.0, 0.5, 0.25])
    np.testing.assert_array_equal(stats["bias_correction_2"], 1.0)


def test_nonfinite_grads_counted_around_apply_if_finite():
    """The Reliability recipe: the guard skips the step, the monitor says why."""
    guarded = optax.apply_if_finite(adam_jax.adam(1e-3), max_consecutive_errors=5)
    tx = monitor(guarded)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    updates, state = jax.jit(tx.update)({"w": jnp.array([1.0, jnp.nan, jnp.inf])}, state, params)
    np.testing.assert_array_equal(np.asarray(updates["w"]), 0.0)
    assert int(adam_jax.step_stats(state)["nonfinite_grads"]) == 2
    assert int(state.inner_state.total_notfinite) == 1


def test_monitor_errors():
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="ScaleByAdamState or ScaleByAdamaxState"):
        monitor(optax.sgd(0.1), learning_rate=0.1, b1=0.9, b2=0.9).init(params)
    with pytest.raises(ValueError, match="cannot find learning_rate, b1"):
        monitor(optax.adam(1e-3), b2=0.999).init(params)  # optax records nothing
    with pytest.raises(ValueError, match="near="):
        monitor(adam_jax.adam(), near=0.0)
    with pytest.raises(ValueError, match="b2="):
        monitor(adam_jax.adam(), b2=1.0)
    with pytest.raises(ValueError, match="exactly one MonitorState"):
        adam_jax.step_stats(adam_jax.adam().init(params))
    with pytest.raises(ValueError, match="every="):
        monitor(adam_jax.adam(), every=0)


STAT_FIELDS = (
    "max_step",
    "mean_step",
    "step_bound",
    "frac_near_bound",
    "mean_snr",
    "bias_correction_1",
    "bias_correction_2",
    "nonfinite_grads",
    "step",
)
MASK = {"dense": True, "sparse": False}

# (name, transformation, alpha, b1, b2 or None for AdaMax): every constructor that records its
# hyperparameters, alone and inside the wrappers they must survive.
CONSTRUCTORS = [
    ("adam", lambda: adam_jax.adam(1e-2, b1=0.8, b2=0.99), 1e-2, 0.8, 0.99),
    ("adamw", lambda: adam_jax.adamw(1e-2, 0.8, 0.99, weight_decay=0.1), 1e-2, 0.8, 0.99),
    ("adamax", lambda: adam_jax.adamax(2e-2, b1=0.7), 2e-2, 0.7, None),
    ("scale_by_adam", lambda: adam_jax.scale_by_adam(0.5, 0.9), 1.0, 0.5, 0.9),
    ("scale_by_adamax", lambda: adam_jax.scale_by_adamax(0.5), 1.0, 0.5, None),
    ("torch_adam", lambda: compat.torch_adam(1e-2, (0.8, 0.99), amsgrad=True), 1e-2, 0.8, 0.99),
    ("torch_adamw", lambda: compat.torch_adamw(3e-2, (0.6, 0.95)), 3e-2, 0.6, 0.95),
    ("torch_adamax", lambda: compat.torch_adamax(1e-2, (0.7, 0.9)), 1e-2, 0.7, None),
    ("keras_adam", lambda: compat.keras_adam(1e-2, 0.8, 0.99), 1e-2, 0.8, 0.99),
    ("keras_adamw", lambda: compat.keras_adamw(1e-2, 0.1, 0.8, 0.99), 1e-2, 0.8, 0.99),
    ("keras_adamax", lambda: compat.keras_adamax(1e-2, 0.7), 1e-2, 0.7, None),
    (
        "inject(adam)",
        lambda: optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-2, b1=0.8, b2=0.99),
        1e-2,
        0.8,
        0.99,
    ),
    (
        "inject(adamax, schedule)",
        lambda: optax.inject_hyperparams(adam_jax.adamax)(optax.constant_schedule(4e-2), 0.7),
        4e-2,
        0.7,
        None,
    ),
    (
        "inject(keras_adam)",
        lambda: optax.inject_hyperparams(compat.keras_adam)(learning_rate=1e-2, beta_1=0.8),
        1e-2,
        0.8,
        0.999,
    ),
    (
        "chain",
        lambda: optax.chain(optax.clip(0.5), adam_jax.adam(1e-2, b1=0.8, b2=0.99)),
        1e-2,
        0.8,
        0.99,
    ),
    ("masked", lambda: optax.masked(adam_jax.adam(1e-2, b1=0.8, b2=0.99), MASK), 1e-2, 0.8, 0.99),
    (
        "quantized_moments",
        lambda: adam_jax.quantized_moments(adam_jax.adam(1e-2, b1=0.8, b2=0.99), min_size=0),
        1e-2,
        0.8,
        0.99,
    ),
    (
        "apply_if_finite",
        lambda: optax.apply_if_finite(adam_jax.adamax(2e-2, b1=0.7), 3),
        2e-2,
        0.7,
        None,
    ),
]


@pytest.mark.parametrize("case", CONSTRUCTORS, ids=[c[0] for c in CONSTRUCTORS])
def test_every_constructor_under_monitor_with_nothing_else(case):
    """monitor(tx) finds alpha, b1 and b2 itself: the bound and the bias corrections are the
    paper's for those values, and max_step is the largest |update| of the unmonitored tx."""
    _, make, alpha, b1, b2 = case
    grads = reference.gradient_sequence(8, dtype=np.float32)
    _, stats = run_stats(monitor(make()), grads)
    plain, _ = run_updates(make(), grads)
    t = np.arange(1, 9)
    bound = alpha * (1.0 if b2 is None else reference.step_bound(b1, b2))
    np.testing.assert_allclose(stats["step_bound"], bound, rtol=2e-5)  # float32 if injected
    np.testing.assert_allclose(stats["bias_correction_1"], 1 - b1**t, rtol=1e-5)
    np.testing.assert_allclose(
        stats["bias_correction_2"], 1.0 if b2 is None else 1 - b2**t, rtol=1e-4
    )
    # over the parameters the Adam state trains (masked: the frozen leaf's raw gradient passes)
    trained = [k for k in plain if case[0] != "masked" or MASK[k]]
    largest = np.max([np.abs(np.asarray(plain[k])).reshape(8, -1).max(1) for k in trained], axis=0)
    np.testing.assert_allclose(stats["max_step"], largest, rtol=1e-6)
    np.testing.assert_array_equal(stats["step"], t)
    assert np.all(np.isfinite(stats["mean_snr"])) and np.all(stats["mean_snr"] > 0)
    if case[0] == "quantized_moments":  # decoded 8-bit moments: the float32 state's SNR, roughly
        _, float_stats = run_stats(monitor(adam_jax.adam(alpha, b1=b1, b2=b2)), grads)
        np.testing.assert_allclose(stats["mean_snr"], float_stats["mean_snr"], rtol=0.05)


def test_a_contradicting_hyperparameter_is_an_error_naming_both_values():
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"learning_rate=0\.001 was passed.*learning_rate=0\.01"):
        monitor(adam_jax.adam(1e-2), learning_rate=1e-3).init(params)
    with pytest.raises(ValueError, match=r"b1=0\.5 was passed.*b1=0\.9"):
        monitor(adam_jax.adamw(1e-2), b1=0.5).init(params)
    with pytest.raises(ValueError, match=r"b2=0\.99 was passed.*b2=0\.999"):
        monitor(compat.torch_adam(), b2=0.99).init(params)
    schedule = optax.constant_schedule(1e-2)
    with pytest.raises(
        ValueError, match=r"learning_rate=0\.01 was passed.*learning_rate=a schedule"
    ):
        monitor(adam_jax.adam(schedule), learning_rate=1e-2).init(params)
    injected = optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-2)
    with pytest.raises(ValueError, match=r"learning_rate=0\.01 was passed.*injected"):
        monitor(injected, learning_rate=1e-2).init(params)
    # Repeating the optimizer's own values is allowed (to float32 rounding).
    tx = monitor(adam_jax.adam(1e-2), learning_rate=np.float32(1e-2), b1=0.9, b2=0.999)
    tx.init(params)
    same = monitor(adam_jax.adam(schedule), learning_rate=schedule)
    same.init(params)


def test_injected_values_are_read_at_run_time_without_recompiling():
    tx = monitor(optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-2, b1=0.9, b2=0.999))
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    traces = []

    def step(grads, state):
        traces.append(1)  # runs once per compilation
        return tx.update(grads, state, params)

    update = jax.jit(step)
    state = tx.init(params)
    for t, (lr, b1) in enumerate([(1e-2, 0.9), (5e-3, 0.9), (5e-3, 0.5), (1e-1, 0.99)], start=1):
        inner = state.inner_state
        changed = dict(inner.hyperparams, learning_rate=jnp.float32(lr), b1=jnp.float32(b1))
        state = state._replace(inner_state=inner._replace(hyperparams=changed))
        _, state = update({"w": jnp.full(6, 0.5)}, state)
        stats = adam_jax.step_stats(state)
        bound = lr * reference.step_bound(b1, 0.999)
        np.testing.assert_allclose(stats["step_bound"], bound, rtol=2e-5)  # float32 b2
        np.testing.assert_allclose(stats["bias_correction_1"], 1 - b1**t, rtol=1e-5)
    assert len(traces) == 1
    assert update._cache_size() == 1


def test_statistics_stay_finite_for_skipped_steps_and_zero_gradients():
    b1, b2 = 0.9, 0.999
    tx = monitor(optax.apply_if_finite(adam_jax.adam(1e-2, b1, b2), 5))
    params = {"w": jnp.ones(3)}
    update = jax.jit(tx.update)
    state = tx.init(params)

    _, state = update({"w": jnp.array([jnp.nan, 1.0, jnp.inf])}, state, params)  # skipped: t = 0
    stats = {k: float(v) for k, v in adam_jax.step_stats(state).items()}
    assert all(np.isfinite(v) for v in stats.values()), stats
    assert stats["step"] == 0 and stats["nonfinite_grads"] == 2 and stats["mean_snr"] == 0.0

    _, state = update({"w": jnp.zeros(3)}, state, params)  # t = 1, zero gradient: v = 0
    stats = {k: float(v) for k, v in adam_jax.step_stats(state).items()}
    assert all(np.isfinite(v) for v in stats.values()), stats
    assert stats["step"] == 1 and stats["max_step"] == 0.0 and stats["mean_snr"] == 0.0

    _, state = update({"w": jnp.array([1.0, -2.0, 3.0])}, state, params)  # t = 2
    # m_2 = (1-b1) g, v_2 = (1-b2) g^2: |m_hat|/sqrt(v_hat) is the same for every element.
    snr = (1 - b1) / (1 - b1**2) / np.sqrt((1 - b2) / (1 - b2**2))
    # rtol: under apply_if_finite the recorded b2 is read as a traced float32 (0.99900001)
    np.testing.assert_allclose(float(adam_jax.step_stats(state)["mean_snr"]), snr, rtol=2e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("every", [1, 2])
def test_every_float_dtype_under_jit(dtype, every):
    """float64 needs jax_enable_x64; the statistics are float32 scalars for every dtype."""
    lr, b1, b2, steps = 1e-2, 0.9, 0.999, 3
    host = [np.sin(np.arange(8.0) * (t + 1)) + 0.1 for t in range(steps)]
    with jax.enable_x64(dtype == "float64"):
        params = {"w": jnp.zeros(8, dtype)}
        tx = monitor(adam_jax.adam(lr, b1, b2, eps=0.0), every=every)
        update = jax.jit(tx.update)
        state = tx.init(params)
        for g in host:
            updates, state = update({"w": jnp.asarray(g, dtype)}, state, params)
        assert updates["w"].dtype == jnp.dtype(dtype)
        stats = {k: np.asarray(v) for k, v in adam_jax.step_stats(state).items()}
    computed = 1 + (steps - 1) // every * every  # the last step the statistics describe
    grads = [np.asarray(g, jnp.dtype(dtype)).astype(np.float64) for g in host]  # as rounded
    want = lr * np.abs(reference.adam(grads[:computed], b1=b1, b2=b2, eps=0.0)[-1])
    rtol = {"float16": 2e-3, "bfloat16": 1e-2}.get(dtype, 1e-5)
    assert stats["step"] == computed
    assert all(v.dtype in (np.float32, np.int32) for v in stats.values())
    assert all(np.isfinite(v) for v in stats.values())
    np.testing.assert_allclose(stats["max_step"], want.max(), rtol=rtol)
    np.testing.assert_allclose(stats["mean_step"], want.mean(), rtol=rtol)


def test_every_k_steps_holds_the_last_computed_statistics():
    lr, b1, b2, every = 1e-2, 0.9, 0.999, 5
    grads = reference.gradient_sequence(12, dtype=np.float32)
    _, stats = run_stats(monitor(adam_jax.adam(lr, b1, b2, eps=0.0), every=every), grads)
    want = expected_stats(grads, lr, b1, b2, near=0.9)
    described = np.array([1, 1, 1, 1, 1, 6, 6, 6, 6, 6, 11, 11])  # t = 1, 6, 11, ... then held
    np.testing.assert_array_equal(stats["step"], described)
    for name in ("max_step", "mean_step", "mean_snr", "bias_correction_1", "bias_correction_2"):
        np.testing.assert_allclose(stats[name], want[name][described - 1], rtol=2e-5, err_msg=name)


def test_step_stats_keeps_its_fields():
    tx = monitor(adam_jax.adam())
    state = tx.init({"w": jnp.ones(2)})
    assert tuple(adam_jax.step_stats(state)) == STAT_FIELDS
    assert adam_jax.StepStats._fields == STAT_FIELDS


def test_hyperparams_record_survives_wrappers_jit_and_eval_shape():
    params = {"dense": jnp.ones((3, 4)), "sparse": jnp.ones(5)}
    grads = jax.tree.map(jnp.ones_like, params)
    base = adam_jax.adam(1e-2, b1=0.8, eps=0.0, amsgrad=True)
    wrapped = [
        base,
        optax.chain(optax.clip(1.0), base),
        optax.masked(base, MASK),
        adam_jax.quantized_moments(base, min_size=0),
        optax.apply_if_finite(base, 3),
        optax.inject_hyperparams(adam_jax.adam, static_args=("learning_rate",))(1e-2, b1=0.8),
    ]
    for tx in wrapped:
        for state in (
            jax.jit(tx.init)(params),
            jax.eval_shape(tx.init, params),
            jax.jit(tx.update)(grads, tx.init(params), params)[1],
        ):
            found = adam_jax.hyperparams(state)
            assert {"learning_rate", "b1", "b2", "eps"} <= found.keys()
            if isinstance(found["b1"], jax.ShapeDtypeStruct):  # values are leaves: eval_shape
                continue
            assert float(found["learning_rate"]) == pytest.approx(1e-2)
            assert float(found["b1"]) == pytest.approx(0.8)  # an array where injected
            assert float(found["b2"]) == pytest.approx(0.999)
    found = adam_jax.hyperparams(base.init(params))
    assert found["amsgrad"] == 1.0 and found["eps"] == 0.0 and found["b2"] == 0.999
    with pytest.raises(ValueError, match="found 0"):
        adam_jax.hyperparams(optax.adam(1e-2).init(params))


def test_the_module_no_longer_collides_with_the_function():
    from pathlib import Path

    from adam_jax import monitor as function
    from adam_jax import monitoring

    assert function is monitoring.monitor and callable(function)
    assert not (Path(adam_jax.__file__).parent / "monitor.py").exists()


def test_the_default_cadence_computes_exact_statistics_every_tenth_step():
    """monitor(tx) computes at t = 1, 11, 21, ... and keeps them in between; what it computes
    equals the statistics of monitoring every step."""
    lr, b1, b2 = 1e-2, 0.9, 0.999
    grads = [{"w": jnp.asarray(np.sin(np.arange(6.0) + t), jnp.float32)} for t in range(23)]
    _, default = run_stats(adam_jax.monitor(adam_jax.adam(lr, b1, b2)), grads)
    _, every_step = run_stats(monitor(adam_jax.adam(lr, b1, b2)), grads)
    described = [1 + (t - 1) // 10 * 10 for t in range(1, 24)]
    np.testing.assert_array_equal(default["step"], described)
    for name in STAT_FIELDS:
        np.testing.assert_allclose(
            np.asarray(default[name]),
            np.asarray(every_step[name])[np.asarray(described) - 1],
            rtol=1e-6,
        )


def test_statistics_average_over_the_trained_parameters_only():
    """Under optax.partition the frozen leaves' zero updates do not dilute the means: one step
    of Adam with g = 1 moves every trained element by alpha with SNR 1."""
    params = {"a": jnp.ones(4), "frozen": jnp.ones(12)}
    inner = optax.partition(
        {"t": adam_jax.adam(1e-2), "f": optax.set_to_zero()}, {"a": "t", "frozen": "f"}
    )
    tx = monitor(inner)
    _, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    stats = adam_jax.step_stats(state)
    np.testing.assert_allclose(stats["mean_step"], 1e-2, rtol=1e-5)
    np.testing.assert_allclose(stats["mean_snr"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(stats["frac_near_bound"], 0.0)


def test_every_beyond_the_int32_step_count_is_refused():
    with pytest.raises(ValueError, match=r"every=2147483648 is out of range.*at most 2147483647"):
        adam_jax.monitor(adam_jax.adam(), every=2**31)
    adam_jax.monitor(adam_jax.adam(), every=2**31 - 1).init({"w": jnp.ones(2)})


def test_the_default_cadence_is_the_one_measured():
    """The monitor's cost on the docs' monitor page is measured for the default as it is now
    (``results/monitor/cpu-run*.txt``, rows "monitor (default)" and "monitor every=10")."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    runs = sorted((root / "results" / "monitor").glob("cpu-run*.txt"))
    assert len(runs) >= 2
    for run in runs:
        text = run.read_text()
        assert "monitor (default)" in text and "monitor every=10" in text, run
    assert adam_jax.monitor.__kwdefaults__["every"] == 10
