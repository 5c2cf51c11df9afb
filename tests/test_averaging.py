"""temporal_averaging / averaged_params (Section 7.2) and adamw, against tests/reference.py and optax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests import reference
from tests.helpers import param_trajectory

STEPS = 120


def _trajectory(tx, grads_seq, params0):
    """Run ``tx`` on a fixed gradient sequence; stacked parameters after every step, final state."""
    stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *grads_seq)

    @jax.jit
    def run(stacked_grads):
        def body(carry, g):
            params, state = carry
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), (params, adam_jax.averaged_params(state))

        (_, state), (thetas, avgs) = jax.lax.scan(body, (params0, tx.init(params0)), stacked_grads)
        return thetas, avgs, state

    return run(stacked)


def _params0(dtype=np.float64):
    rng = np.random.default_rng(1)
    return {
        "dense": rng.normal(size=(3, 4)).astype(dtype),
        "sparse": rng.normal(size=5).astype(dtype),
    }


@pytest.mark.parametrize("debias", [True, False])
@pytest.mark.parametrize("decay", [0.9, 0.999])
def test_average_of_adam_trajectory_matches_reference(decay, debias):
    lr = 1e-2
    with jax.enable_x64(True):
        grads = reference.gradient_sequence(STEPS)
        params0 = _params0()
        tx = optax.chain(adam_jax.adam(lr), adam_jax.temporal_averaging(decay, debias=debias))
        thetas, avgs, _ = _trajectory(tx, grads, params0)
        for k in params0:
            ref_thetas = params0[k] - lr * np.cumsum(reference.adam([g[k] for g in grads]), axis=0)
            np.testing.assert_allclose(np.asarray(thetas[k]), ref_thetas, rtol=1e-10)
            ref_avg = reference.temporal_average(list(ref_thetas), decay, debias)
            np.testing.assert_allclose(np.asarray(avgs[k]), np.stack(ref_avg), rtol=1e-9)


def test_updates_pass_through_unchanged_and_average_is_found_when_nested():
    grads = reference.gradient_sequence(5, dtype=np.float32)
    params = _params0(np.float32)
    inner = adam_jax.adam(1e-2)
    tx = optax.chain(optax.chain(inner, adam_jax.temporal_averaging(0.5)), optax.identity())
    s_in, s = inner.init(params), tx.init(params)
    assert adam_jax.averaged_params(s)["dense"].shape == (3, 4)
    np.testing.assert_array_equal(np.asarray(adam_jax.averaged_params(s)["dense"]), 0.0)
    thetas = []
    for g in grads:
        u_in, s_in = inner.update(g, s_in, params)
        u, s = tx.update(g, s, params)
        for k in params:
            np.testing.assert_array_equal(np.asarray(u[k]), np.asarray(u_in[k]))
        params = optax.apply_updates(params, u)
        thetas.append(params["sparse"])
    ref = reference.temporal_average(thetas, 0.5)[-1]
    np.testing.assert_allclose(np.asarray(adam_jax.averaged_params(s)["sparse"]), ref, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_average_state_is_float32_or_wider(dtype):
    params = {"w": jnp.ones(3, dtype)}
    tx = adam_jax.temporal_averaging(0.999)
    state = tx.init(params)
    assert state.average["w"].dtype == jnp.float32
    # With decay 0.999 a bfloat16 average would round (1-decay)*theta away; float32 keeps it.
    for _ in range(3):
        _, state = tx.update({"w": jnp.zeros(3, dtype)}, state, params)
    np.testing.assert_allclose(np.asarray(adam_jax.averaged_params(state)["w"]), 1.0, rtol=1e-4)


def test_average_requires_params_and_a_state_to_find():
    tx = adam_jax.temporal_averaging()
    state = tx.init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update({"w": jnp.ones(2)}, state)
    with pytest.raises(ValueError, match="exactly one TemporalAveragingState"):
        adam_jax.averaged_params(adam_jax.adam().init({"w": jnp.ones(2)}))
    two = optax.chain(tx, tx).init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="found 2"):
        adam_jax.averaged_params(two)


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_average_decay_validation(bad):
    with pytest.raises(ValueError, match=r"decay=.* must lie in \[0, 1\)"):
        adam_jax.temporal_averaging(bad)


def test_adamw_matches_reference_and_optax():
    lr, wd = 1e-2, 0.1
    with jax.enable_x64(True):
        grads = reference.gradient_sequence(STEPS)
        params0 = _params0()
        tx = optax.chain(adam_jax.adamw(lr, weight_decay=wd), adam_jax.temporal_averaging())
        thetas, _, _ = _trajectory(tx, grads, params0)
        for k in params0:
            ref = reference.adamw_trajectory(params0[k], [g[k] for g in grads], lr, wd)
            np.testing.assert_allclose(np.asarray(thetas[k]), np.stack(ref), rtol=1e-10)


def _final_params(tx, grads_seq, params0):
    """Parameters after running ``tx`` over the gradient sequence."""
    thetas, _ = param_trajectory(tx, grads_seq, params0)
    return jax.tree.map(lambda x: x[-1], thetas)


@pytest.mark.parametrize("options", [dict(), dict(nesterov=True), dict(eps_root=1e-8)])
def test_adamw_matches_optax_adamw_with_mask(options):
    grads = reference.gradient_sequence(60, dtype=np.float32)
    params = _params0(np.float32)
    mask = {"dense": True, "sparse": False}
    ours = _final_params(
        adam_jax.adamw(3e-2, weight_decay=0.5, mask=mask, **options), grads, params
    )
    theirs = _final_params(optax.adamw(3e-2, weight_decay=0.5, mask=mask, **options), grads, params)
    for k in params:
        scale = np.max(np.abs(theirs[k] - params[k]))
        assert np.max(np.abs(ours[k] - theirs[k])) <= 1e-5 * scale
    # The mask matters: the decayed leaf moved differently from plain Adam's, the masked one did not.
    plain = _final_params(adam_jax.adam(3e-2, **options), grads, params)
    np.testing.assert_allclose(ours["sparse"], plain["sparse"], rtol=1e-5)
    assert np.max(np.abs(ours["dense"] - plain["dense"])) > 1e-2


@pytest.mark.parametrize("bad", [-1e-3, float("nan")])
def test_adamw_weight_decay_validation(bad):
    with pytest.raises(ValueError, match="weight_decay="):
        adam_jax.adamw(weight_decay=bad)
    with pytest.raises(ValueError, match=r"weight_decay=\S+ \(a JAX array\)"):
        adam_jax.adamw(weight_decay=jnp.asarray(bad))  # a concrete JAX value is checked too
    jax.jit(lambda wd: adam_jax.adamw(weight_decay=wd).init({"w": jnp.ones(2)}))(bad)  # traced
