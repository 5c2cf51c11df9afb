"""kahan_summation: bfloat16 training reaches the float32 result with it, and stalls without it."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

import adam_jax
from adam_jax.kahan import kahan_summation
from tests.helpers import minimize

TARGET = np.array([1.3, 0.4, 1.9, 1.05], np.float32)


def _train(tx, dtype, steps=3000):
    target = jnp.asarray(TARGET)
    loss = lambda p: jnp.sum((p.astype(jnp.float32) - target) ** 2)
    return np.asarray(minimize(tx, loss, jnp.ones(4, dtype), steps), np.float32)


def test_bfloat16_with_kahan_reaches_float32_result():
    lr = 1e-3  # below bfloat16's half-ulp at 1 (2^-8), so plain bf16 steps round away
    reference = _train(adam_jax.adam(lr), jnp.float32)
    np.testing.assert_allclose(reference, TARGET, atol=1e-2)  # float32 converges
    with_kahan = _train(optax.chain(adam_jax.adam(lr), kahan_summation()), jnp.bfloat16)
    without = _train(adam_jax.adam(lr), jnp.bfloat16)
    assert np.max(np.abs(with_kahan - reference)) <= 1e-2
    assert np.max(np.abs(without - reference)) > 0.1  # stalls: updates round to zero


def test_applied_updates_land_exactly_and_compensation_holds_the_rest():
    tx = kahan_summation()
    p = jnp.array([1.0, 256.0], jnp.bfloat16)
    state = tx.init(p)
    assert state.compensation.dtype == jnp.bfloat16
    u, state = tx.update(jnp.array([1e-3, 0.75], jnp.float32), state, p)
    new = optax.apply_updates(p, u)
    # In bfloat16 1 + 1e-3 rounds to 1 and 256 + 0.75 to 256 (ulp 2): nothing is applied...
    np.testing.assert_array_equal(np.asarray(new, np.float32), [1.0, 256.0])
    # ...and the compensation keeps what was dropped, to bfloat16's relative precision.
    kept = np.asarray(state.compensation, np.float64)
    np.testing.assert_allclose(kept, [1e-3, 0.75], rtol=2**-8)


def test_needs_params():
    tx = kahan_summation()
    state = tx.init(jnp.ones(2, jnp.bfloat16))
    try:
        tx.update(jnp.ones(2), state)
    except ValueError as err:
        assert "params" in str(err)
    else:
        raise AssertionError("expected a ValueError")
