"""Contracts at the API boundary: injected hyperparameters, integer leaves, NumPy numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"learning_rate": -1.0}, r"learning_rate=-1 \(a JAX array\) is out of range"),
        ({"learning_rate": 1e-3, "b1": float("nan")}, r"b1=nan \(a JAX array\) is out of range"),
        ({"learning_rate": 1e-3, "b2": 1.0}, r"b2=1 \(a JAX array\) is out of range"),
        ({"learning_rate": 1e-3, "eps": -1e-8}, r"eps=-1e-08 \(a JAX array\) is out of range"),
    ],
)
def test_injected_hyperparameters_are_checked_when_concrete(kwargs, pattern):
    tx = optax.inject_hyperparams(adam_jax.adam)(**kwargs)
    with pytest.raises(ValueError, match=pattern):
        tx.init({"w": jnp.ones(2)})


def test_injected_value_changed_in_the_state_is_checked_eagerly_not_under_jit():
    tx = optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-3)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    state.hyperparams["b1"] = jnp.asarray(1.5)
    with pytest.raises(ValueError, match=r"b1=1\.5 \(a JAX array\) is out of range"):
        tx.update(params, state, params)
    # Under jit the value is a tracer: checking it would need a device-to-host sync every step.
    updates, _ = jax.jit(tx.update)(params, state, params)
    assert updates["w"].shape == (2,)


def test_valid_injected_values_still_train_and_do_not_recompile():
    tx = optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-2)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    _, state = step(params, state, params)
    compiled = step._cache_size()
    for lr in (3e-3, 1e-3):
        state.hyperparams["learning_rate"] = jnp.full_like(state.hyperparams["learning_rate"], lr)
        updates, state = step(params, state, params)
    assert step._cache_size() == compiled
    np.testing.assert_allclose(updates["w"], -1e-3, rtol=1e-3)


def test_kahan_summation_refuses_integer_params():
    with pytest.raises(TypeError, match=r"kahan_summation: parameter leaf \['n'\] has dtype int32"):
        adam_jax.kahan_summation().init({"w": jnp.ones(2), "n": jnp.zeros((), jnp.int32)})


def test_numpy_numbers_are_accepted_where_python_numbers_are():
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([1.0, -1.0, 0.5])}
    ours = adam_jax.adam(
        np.float32(1e-2), b1=np.float64(0.9), b2=np.float32(0.999), eps=np.float64(1e-8)
    )
    ref = optax.adam(1e-2)
    u, _ = ours.update(grads, ours.init(params), params)
    r, _ = ref.update(grads, ref.init(params), params)
    np.testing.assert_allclose(u["w"], r["w"], rtol=1e-5)
    adam_jax.adam(np.int64(1))
    adam_jax.bias_correction(np.float32(0.9))
    schedule = adam_jax.inverse_sqrt_schedule(np.int32(1))
    np.testing.assert_allclose(schedule(3), 0.5, rtol=1e-6)


@pytest.mark.parametrize(
    ("tx", "other", "expected", "given"),
    [
        (adam_jax.adam, adam_jax.adamax, "ScaleByAdamState", "ScaleByAdamaxState"),
        (adam_jax.adamax, adam_jax.adam, "ScaleByAdamaxState", "ScaleByAdamState"),
        (
            lambda: adam_jax.bias_correction(0.9),
            adam_jax.adam,
            "BiasCorrectionState",
            "tuple",
        ),
        (adam_jax.kahan_summation, adam_jax.temporal_averaging, "KahanSummationState", "Temporal"),
        (adam_jax.temporal_averaging, adam_jax.kahan_summation, "TemporalAveragingState", "Kahan"),
    ],
    ids=["adam<-adamax", "adamax<-adam", "bias_correction<-adam", "kahan<-avg", "avg<-kahan"],
)
def test_update_refuses_a_state_its_init_did_not_make(tx, other, expected, given):
    params = {"w": jnp.ones(3)}
    with pytest.raises(
        TypeError, match=rf"update was given a {given}\w*, but its init makes a {expected}"
    ):
        tx().update(params, other().init(params), params)


@pytest.mark.parametrize("wrapper", ["monitor", "quantized_moments"])
@pytest.mark.parametrize("bad", [None, "adam", optax.adam], ids=["None", "str", "factory"])
def test_wrappers_reject_non_transformations_at_construction(wrapper, bad):
    with pytest.raises(TypeError, match=r"tx must be an optax\.GradientTransformation"):
        getattr(adam_jax, wrapper)(bad)


def test_state_structure_survives_rebuilding_the_optimizer():
    """init with one instance, update with a rebuilt one (a new schedule function): the state's
    tree structure is unchanged, so lax.scan carries it and a jitted step is traced once."""

    def make_tx():
        return adam_jax.adam(adam_jax.inverse_sqrt_schedule(1e-2))

    params = {"w": jnp.ones(3)}
    state = make_tx().init(params)
    traces = []

    @jax.jit
    def epoch(params, state):
        tx = make_tx()
        traces.append(1)

        def step(carry, _):
            p, s = carry
            updates, s = tx.update({"w": jnp.ones(3)}, s, p)
            return (optax.apply_updates(p, updates), s), None

        return jax.lax.scan(step, (params, state), None, length=4)[0]

    for _ in range(3):
        params, state = epoch(params, state)
    assert len(traces) == 1
    ref = optax.adam(lambda c: 1e-2 / jnp.sqrt(c + 1.0))
    ref_params, ref_state = {"w": jnp.ones(3)}, None
    ref_state = ref.init(ref_params)
    for _ in range(12):
        u, ref_state = ref.update({"w": jnp.ones(3)}, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, u)
    np.testing.assert_allclose(params["w"], ref_params["w"], rtol=1e-5)
