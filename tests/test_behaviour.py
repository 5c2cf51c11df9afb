"""Behaviour users rely on: validation, dtypes, saturation, odd trees, optax composition, variants."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests import reference
from tests.helpers import reference_per_leaf, run_updates

TRANSFORMS = {
    "scale_by_adam": adam_jax.scale_by_adam,
    "scale_by_adamax": adam_jax.scale_by_adamax,
    "adam": adam_jax.adam,
    "adamax": adam_jax.adamax,
}

# ---- constructor validation ----------------------------------------------------------------

BAD_ARGUMENTS = [
    ("b1", 1.5, "[0, 1)"),
    ("b1", -0.1, "[0, 1)"),
    ("b1", 1.0, "[0, 1)"),
    ("b2", 1.0, "[0, 1)"),
    ("b2", float("nan"), "[0, 1)"),
    ("eps", -1.0, "[0, inf)"),
    ("eps", float("inf"), "[0, inf)"),
    ("b1_decay", 0.0, "(0, 1]"),
    ("b1_decay", 1.5, "(0, 1]"),
]


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("arg, value, allowed", BAD_ARGUMENTS)
def test_bad_hyperparameter_names_argument_value_and_range(name, arg, value, allowed):
    with pytest.raises(ValueError) as err:
        TRANSFORMS[name](**{arg: value})
    message = str(err.value)
    assert f"{arg}={value!r}" in message and allowed in message


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), np.float32(-3)])
@pytest.mark.parametrize("make", [adam_jax.adam, adam_jax.adamax])
def test_bad_learning_rate(make, value):
    with pytest.raises(ValueError, match="learning_rate="):
        make(value)


def test_bad_eps_root_and_numpy_values_are_checked():
    with pytest.raises(ValueError, match=r"eps_root=-1e-08 .*\[0, inf\)"):
        adam_jax.scale_by_adam(eps_root=-1e-8)
    with pytest.raises(ValueError, match="b2="):
        adam_jax.adam(b2=np.float64(1.2))
    with pytest.raises(ValueError, match="decay="):
        adam_jax.bias_correction(1.0)
    with pytest.raises(ValueError, match="init_value="):
        adam_jax.inverse_sqrt_schedule(-0.1)
    with pytest.raises(TypeError, match="amsgrad"):
        adam_jax.scale_by_adam(amsgrad="yes")


def test_boundary_values_are_accepted():
    adam_jax.adam(0.0, b1=0.0, b2=0.0, eps=0.0, eps_root=0.0, b1_decay=1.0)
    adam_jax.adamax(0.0, b1=0.0, b2=0.0, eps=0.0, b1_decay=1e-12)
    adam_jax.adam(optax.exponential_decay(1e-3, 10, 0.5))  # schedules are not numbers


def test_traced_hyperparameters_skip_validation_concrete_arrays_do_not():
    """Traced values are accepted unchecked (inject_hyperparams under jit); a concrete JAX array's
    value is known, so it is range-checked like a number."""
    adam_jax.adam(jnp.asarray(1e-3), b1=jnp.asarray(0.9))
    with pytest.raises(ValueError, match="learning_rate=-1 \\(a JAX array\\) is out of range"):
        adam_jax.adam(jnp.asarray(-1.0))
    jax.jit(lambda b1: adam_jax.scale_by_adam(b1=b1).init({"w": jnp.ones(2)}))(jnp.asarray(2.0))


def test_integer_parameters_raise_type_error_naming_leaf():
    params = {"layer": {"kernel": jnp.ones((2, 2)), "steps": jnp.zeros((), jnp.int32)}}
    for make in TRANSFORMS.values():
        with pytest.raises(TypeError, match=r"\['layer'\]\['steps'\].*optax.masked"):
            make().init(params)
    with pytest.raises(TypeError, match="bool"):
        adam_jax.adam().init({"flag": jnp.array(True)})


# ---- inject_hyperparams ------------------------------------------------------------------


def test_inject_hyperparams_matches_and_does_not_recompile():
    params = {"w": jnp.ones(4)}
    grads = reference.gradient_sequence(30, dtype=np.float32)
    grads = [{"w": g["dense"][0]} for g in grads]
    injected = optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-2, b1=0.8, b2=0.99)
    traces = []

    @jax.jit
    def step(g, state):
        traces.append(1)
        return injected.update(g, state, params)

    state = injected.init(params)
    plain = adam_jax.adam(1e-2, b1=0.8, b2=0.99)
    plain_state = plain.init(params)
    traces_before_change = None
    for i, g in enumerate(grads):
        if i == 15:  # change hyperparameters in flight; the moments carry over
            traces_before_change = len(traces)
            state.hyperparams["learning_rate"] = jnp.asarray(3e-2, jnp.float32)
            state.hyperparams["b1"] = jnp.asarray(0.5, jnp.float32)
            plain = adam_jax.adam(3e-2, b1=0.5, b2=0.99)
        u, state = step(g, state)
        pu, plain_state = plain.update(g, plain_state, params)
        chex.assert_trees_all_close(u, pu, rtol=1e-5, atol=1e-8)
    assert len(traces) == traces_before_change  # new values, no recompilation


# ---- counters and dtypes -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["scale_by_adam", "scale_by_adamax"])
def test_step_count_saturates_and_updates_stay_finite(name):
    params = {"w": jnp.ones(3)}
    tx = TRANSFORMS[name](b1_decay=0.999)
    state = tx.init(params)._replace(count=jnp.asarray(np.iinfo(np.int32).max - 1, jnp.int32))
    for _ in range(3):
        u, state = tx.update({"w": jnp.array([1.0, -2.0, 0.0])}, state)
        chex.assert_tree_all_finite(u)
    assert state.count.dtype == jnp.int32
    assert int(state.count) == np.iinfo(np.int32).max


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("name", ["scale_by_adam", "scale_by_adamax"])
def test_half_precision_no_nan_and_float32_state(dtype, name):
    params = {"w": jnp.ones(4, dtype)}
    tx = TRANSFORMS[name]()
    state = tx.init(params)
    assert state.mu["w"].dtype == jnp.float32 and state.nu["w"].dtype == jnp.float32
    tiny = jnp.array([0.0, 1e-7, -6e-8, 3e-5], dtype)  # eps would underflow in half precision
    for g in [jnp.zeros(4, dtype), tiny, jnp.zeros(4, dtype), jnp.full(4, 6e4, dtype)]:
        u, state = tx.update({"w": g}, state)
        assert u["w"].dtype == dtype
        chex.assert_tree_all_finite(u)


def test_half_precision_matches_reference_of_rounded_gradients():
    grads = reference.gradient_sequence(100, dtype=np.float32)
    half = [jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), g) for g in grads]
    ours, _ = run_updates(adam_jax.scale_by_adam(), half)
    ref = reference_per_leaf(
        reference.adam, [jax.tree.map(lambda x: np.asarray(x, np.float64), g) for g in half]
    )
    for k in ref:  # only the final rounding of each update to bfloat16 differs
        np.testing.assert_allclose(np.asarray(ours[k], np.float64), ref[k], rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("mu_dtype, nu_dtype", [(jnp.bfloat16, jnp.bfloat16), (jnp.float16, None)])
def test_moment_storage_dtypes(mu_dtype, nu_dtype):
    grads = reference.gradient_sequence(100, dtype=np.float32)
    tx = adam_jax.scale_by_adam(mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    ours, state = run_updates(tx, grads)
    assert state.mu["dense"].dtype == mu_dtype
    assert state.nu["dense"].dtype == (nu_dtype or jnp.float32)
    assert ours["dense"].dtype == jnp.float32
    ref = reference_per_leaf(reference.adam, grads)
    for k in ref:  # bfloat16 storage keeps ~3 significant digits of the moments
        err = np.linalg.norm(np.asarray(ours[k]) - ref[k]) / np.linalg.norm(ref[k])
        assert err < 2e-2


# ---- odd trees -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_none_leaves_empty_trees_and_zero_size_arrays(name):
    tx = TRANSFORMS[name]()
    params = {"a": jnp.ones(3), "frozen": None, "empty": jnp.zeros((0, 5))}
    state = tx.init(params)
    grads = {"a": jnp.array([1.0, -1.0, 0.5]), "frozen": None, "empty": jnp.zeros((0, 5))}
    u, state = jax.jit(tx.update)(grads, state, params)
    assert u["frozen"] is None
    assert u["empty"].shape == (0, 5)
    chex.assert_tree_all_finite(u["a"])
    u, _ = tx.update({}, tx.init({}))
    assert u == {}


# ---- composition with optax ----------------------------------------------------------------


def _train(tx, steps=40):
    params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
    loss = lambda p: jnp.sum((p["w"] - 0.3) ** 2) + (p["b"] + 1.0) ** 2

    @jax.jit  # one compile; eagerly, MultiSteps' lax.cond traced and compiled its branches anew each step
    def step(params, state):
        u, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, u), state

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def test_inside_chain_with_clipping_equals_optax():
    ours, _ = _train(optax.chain(optax.clip_by_global_norm(1.0), adam_jax.adam(0.1)))
    theirs, _ = _train(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1)))
    chex.assert_trees_all_close(ours, theirs, rtol=1e-4)


def test_multisteps_accumulates_like_optax():
    ours, _ = _train(optax.MultiSteps(adam_jax.adam(0.1), every_k_schedule=3))
    theirs, _ = _train(optax.MultiSteps(optax.adam(0.1), every_k_schedule=3))
    chex.assert_trees_all_close(ours, theirs, rtol=1e-4)


def test_masked_equals_optax_and_keeps_no_state_for_masked_leaves():
    tx = optax.masked(adam_jax.adam(0.1), {"w": True, "b": False})
    params, state = _train(tx)
    assert isinstance(state.inner_state[0].mu["b"], optax.MaskedNode)
    ref, _ = _train(optax.masked(optax.adam(0.1), {"w": True, "b": False}))
    chex.assert_trees_all_close(params, ref, rtol=1e-4)


def test_apply_if_finite_skips_nan_steps():
    tx = optax.apply_if_finite(adam_jax.adam(0.1), max_consecutive_errors=5)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.array([1.0, jnp.nan])}, state, params)
    inner = state.inner_state[0]
    chex.assert_tree_all_finite((inner.mu, inner.nu))
    assert int(inner.count) == 0 and int(state.notfinite_count) == 1


def test_flatten_equals_unflattened():
    ours, _ = _train(optax.flatten(adam_jax.adam(0.1)))
    plain, _ = _train(adam_jax.adam(0.1))
    chex.assert_trees_all_close(ours, plain, rtol=1e-6)


# ---- chex variants: jit, no jit, pmap, device ----------------------------------------------


class VariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True, with_pmap=True, with_device=True)
    def test_init_update_across_variants(self):
        grads = reference.gradient_sequence(12, dtype=np.float32)
        ref = reference_per_leaf(reference.adam, grads)
        ref_max = reference_per_leaf(reference.adamax, grads)
        for tx, expected in [
            (adam_jax.scale_by_adam(), ref),
            (adam_jax.scale_by_adamax(), ref_max),
        ]:
            init = self.variant(tx.init)
            update = self.variant(tx.update)
            state = init(grads[0])
            for t, g in enumerate(grads):
                u, state = update(g, state)
                for k in expected:
                    np.testing.assert_allclose(
                        np.asarray(u[k]), expected[k][t], rtol=2e-5, atol=1e-7
                    )
