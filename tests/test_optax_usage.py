"""optax's documented usage patterns, run with adam_jax in place of optax.

Each transformation takes what optax's own transformations take as leaves: Python scalars, NumPy
arrays and JAX arrays, with and without ``jit``. The reference is optax itself (the same
hyperparameters through optax's implementation), not adam_jax's own output.
"""

from __future__ import annotations

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import compat

# (adam_jax transformation, optax transformation that computes the same updates)
PAIRS = {
    "adam": (lambda: adam_jax.adam(0.1), lambda: optax.adam(0.1)),
    "adamax": (lambda: adam_jax.adamax(0.1), lambda: optax.adamax(0.1, eps=0.0)),
    "adamw": (
        lambda: adam_jax.adamw(0.1, weight_decay=0.01),
        lambda: optax.adamw(0.1, weight_decay=0.01),
    ),
    "scale_by_adam": (adam_jax.scale_by_adam, optax.scale_by_adam),
    "scale_by_adamax": (adam_jax.scale_by_adamax, lambda: optax.scale_by_adamax(eps=0.0)),
    "bias_correction": (
        lambda: optax.chain(optax.ema(0.9, debias=False), adam_jax.bias_correction(0.9)),
        lambda: optax.ema(0.9, debias=True),
    ),
    "temporal_averaging": (
        lambda: optax.chain(adam_jax.adam(0.1), adam_jax.temporal_averaging(0.9)),
        lambda: optax.adam(0.1),
    ),
    "kahan_summation": (
        lambda: optax.chain(adam_jax.adam(0.1), adam_jax.kahan_summation()),
        lambda: optax.adam(0.1),
    ),
    "monitor": (
        lambda: adam_jax.monitor(adam_jax.adam(0.1), learning_rate=0.1, b1=0.9, b2=0.999),
        lambda: optax.adam(0.1),
    ),
    "torch_adam": (lambda: compat.torch_adam(lr=0.1), lambda: optax.adam(0.1)),
    "inject_hyperparams": (
        lambda: optax.inject_hyperparams(adam_jax.adam)(learning_rate=0.1),
        lambda: optax.adam(0.1),
    ),
}

LEAF_KINDS = {
    "python": lambda v: v,
    "numpy": lambda v: np.asarray(v, np.float32),
    "jax": lambda v: jnp.asarray(v, jnp.float32),
}


def _three_steps(tx, make, use_jit):
    params = {"a": make(0.5), "b": {"c": make(-2.0)}}
    update = jax.jit(tx.update) if use_jit else tx.update
    state = tx.init(params)
    out = []
    for g_a, g_c in [(1.0, 0.25), (-0.5, 0.0), (2.0, -1.0)]:
        grads = {"a": make(g_a), "b": {"c": make(g_c)}}
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(updates)
    return out, params


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("kind", list(LEAF_KINDS))
@pytest.mark.parametrize("name", list(PAIRS))
def test_leaves_as_optax_accepts_them(name, kind, use_jit):
    ours, theirs = PAIRS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, got_params = _three_steps(ours(), LEAF_KINDS[kind], use_jit)
    # optax on float32 arrays is the reference for every leaf kind
    want, want_params = _three_steps(theirs(), LEAF_KINDS["jax"], use_jit=False)
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        chex.assert_trees_all_close(g, w, rtol=2e-5, atol=1e-7, custom_message=f"step {step + 1}")
    chex.assert_trees_all_close(got_params, want_params, rtol=2e-5, atol=1e-7)


def test_the_documented_example_issue_reproducer():
    """The exact call from the bug report: Python floats, no jit."""
    tx = adam_jax.adam(0.1)
    state = tx.init({"a": 1.0})
    updates, _ = tx.update({"a": 0.5}, state, {"a": 1.0})
    np.testing.assert_allclose(updates["a"], -0.1, rtol=1e-6)


def test_optax_getting_started_loop():
    """optax's "getting started" loop (linear regression, grads from jax.grad, apply_updates),
    with adam_jax.adam in place of optax.adam: the same parameters after 100 steps."""
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(16, 10)).astype(np.float32)
    ys = xs @ rng.normal(size=10).astype(np.float32)

    def loss(params, x, y):
        return jnp.mean(optax.l2_loss(x @ params["w"], y))

    def fit(optimizer):
        params = {"w": jnp.ones((10,))}
        opt_state = optimizer.init(params)

        @jax.jit
        def step(params, opt_state):
            grads = jax.grad(loss)(params, xs, ys)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        for _ in range(100):
            params, opt_state = step(params, opt_state)
        return params, loss(params, xs, ys)

    (ours, our_loss), (theirs, their_loss) = fit(adam_jax.adam(1e-2)), fit(optax.adam(1e-2))
    chex.assert_trees_all_close(ours, theirs, rtol=1e-4, atol=1e-6)
    assert our_loss < 0.5 * loss({"w": jnp.ones((10,))}, xs, ys)
    np.testing.assert_allclose(our_loss, their_loss, rtol=1e-3)


def test_optax_chain_clip_then_adam_then_schedule():
    """optax's gradient clipping + rescaler + schedule chain, with adam_jax's rescaler."""
    schedule = optax.linear_schedule(1e-2, 1e-3, 10)

    def build(scale_by_adam):
        return optax.chain(
            optax.clip_by_global_norm(1.0), scale_by_adam(), optax.scale_by_learning_rate(schedule)
        )

    params = {"w": jnp.arange(4.0), "b": jnp.zeros(())}
    ours, theirs = build(adam_jax.scale_by_adam), build(optax.scale_by_adam)
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    for t in range(12):
        grads = {"w": jnp.sin(jnp.arange(4.0) + t) * 3, "b": jnp.asarray(float(t % 3) - 1)}
        u_ours, s_ours = ours.update(grads, s_ours, params)
        u_theirs, s_theirs = theirs.update(grads, s_theirs, params)
        chex.assert_trees_all_close(u_ours, u_theirs, rtol=2e-5, atol=1e-8)


def test_numpy_params_with_optax_apply_updates():
    params = {"w": np.linspace(-1, 1, 5).astype(np.float32)}
    tx, ref = adam_jax.adam(1e-2), optax.adam(1e-2)
    u, _ = tx.update({"w": np.ones(5, np.float32)}, tx.init(params), params)
    r, _ = ref.update({"w": np.ones(5, np.float32)}, ref.init(params), params)
    chex.assert_trees_all_close(u, r, rtol=2e-5, atol=1e-8)
