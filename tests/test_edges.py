"""Numerics at the edges: huge gradients, narrow storage dtypes, the saturated step count.

References are float64 NumPy computations of the paper's recurrences (m_t, v_t, u_t), or the
dtype's own largest finite value where a moment must saturate.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adam_jax

F32_MAX = float(jnp.finfo(jnp.float32).max)
INT32_MAX = int(jnp.iinfo(jnp.int32).max)


def _ema_f64(grads, b, power):
    out, x = [], np.zeros_like(np.asarray(grads[0], np.float64))
    for g in grads:
        x = b * x + (1 - b) * np.abs(np.asarray(g, np.float64)) ** power
        out.append(x)
    return out


def _run(tx, grads, params):
    state = tx.init(params)
    states, updates = [], []
    step = jax.jit(tx.update)
    for g in grads:
        u, state = step({"w": jnp.asarray(g, jnp.float32)}, state, params)
        states.append(state[0])
        updates.append(u["w"])
    return states, updates


def test_inverse_sqrt_schedule_finite_at_the_saturated_count():
    schedule = adam_jax.inverse_sqrt_schedule(1e-2)
    got = float(schedule(jnp.asarray(INT32_MAX, jnp.int32)))
    np.testing.assert_allclose(got, 1e-2 / np.sqrt(2.0**31), rtol=1e-6)
    tx = adam_jax.adam(adam_jax.inverse_sqrt_schedule(1e-2))
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    state = jax.tree.map(
        lambda x: jnp.full_like(x, INT32_MAX) if x.dtype == jnp.int32 else x, state
    )
    updates, state = tx.update({"w": jnp.array([1.0, -2.0, 0.5])}, state, params)
    chex.assert_tree_all_finite(updates)
    assert jnp.all(updates["w"] != 0)


def test_gradient_whose_square_overflows_float32_keeps_exact_moments():
    """g = 1e20: g*g overflows float32 but (1-b2) g^2 = 1e37 does not; v must equal it."""
    grads = [np.array([1e20, -3e19, 1.0]), np.array([1.0, 2.0, -1.0]), np.array([0.5, 0.0, 1.0])]
    states, updates = _run(adam_jax.adam(1e-3), grads, {"w": jnp.ones(3)})
    for state, m_ref, v_ref in zip(
        states, _ema_f64_signed(grads, 0.9), _ema_f64(grads, 0.999, 2), strict=True
    ):
        np.testing.assert_allclose(state.nu["w"], v_ref, rtol=2e-6)
        np.testing.assert_allclose(state.mu["w"], m_ref, rtol=2e-6)
    chex.assert_tree_all_finite(updates)


def _ema_f64_signed(grads, b):
    out, x = [], np.zeros_like(np.asarray(grads[0], np.float64))
    for g in grads:
        x = b * x + (1 - b) * np.asarray(g, np.float64)
        out.append(x)
    return out


def test_second_moment_saturates_and_decays_back():
    """g = 1e30: (1-b2) g^2 = 1e57 is not a float32; v saturates at the float32 maximum (not
    inf), then decays by b2 per step, so the parameter moves again once v has come down."""
    grads = [np.array([1e30, 1.0])] + [np.array([1.0, 1.0])] * 3
    states, updates = _run(adam_jax.adam(1e-3), grads, {"w": jnp.ones(2)})
    v = [float(s.nu["w"][0]) for s in states]
    assert v[0] == F32_MAX
    expected = F32_MAX
    for k in range(1, 4):
        expected = 0.999 * expected + 0.001
        np.testing.assert_allclose(v[k], expected, rtol=1e-6)
    chex.assert_tree_all_finite(updates)
    chex.assert_tree_all_finite([s.mu for s in states])


@pytest.mark.parametrize("nu_dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_narrow_storage_saturates_instead_of_inf(nu_dtype):
    grads = [np.array([1e20, 300.0, 1.0]), np.array([1.0, 1.0, 1.0])]
    states, updates = _run(adam_jax.adam(1e-3, nu_dtype=nu_dtype), grads, {"w": jnp.ones(3)})
    largest = float(jnp.finfo(nu_dtype).max)
    v_ref = _ema_f64(grads, 0.999, 2)
    for state, ref in zip(states, v_ref, strict=True):
        nu = np.asarray(state.nu["w"], np.float64)
        assert np.all(np.isfinite(nu))
        np.testing.assert_allclose(nu, np.minimum(ref, largest), rtol=1e-2)
    chex.assert_tree_all_finite(updates)


@pytest.mark.parametrize("nu_dtype", [None, jnp.float16], ids=["f32", "f16"])
def test_adamax_infinity_norm_after_a_huge_gradient(nu_dtype):
    grads = [np.array([1e30, -5.0]), np.array([1.0, 1.0]), np.array([2.0, 0.0])]
    states, updates = _run(adam_jax.adamax(1e-3, nu_dtype=nu_dtype), grads, {"w": jnp.ones(2)})
    largest = float(jnp.finfo(nu_dtype or jnp.float32).max)
    u_ref, u = [], np.zeros(2)
    for g in grads:  # Algorithm 2, with u saturating at the storage dtype's maximum
        u = np.minimum(np.maximum(0.999 * u, np.abs(g)), largest)
        u_ref.append(u)
    for state, ref in zip(states, u_ref, strict=True):
        got = np.asarray(state.nu["w"], np.float64)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, ref, rtol=1e-3)
    chex.assert_tree_all_finite(updates)
