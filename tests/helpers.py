"""Shared test utilities: run a transformation over a gradient sequence, compare with a reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


def run_updates(tx, grads_seq, params=None):
    """Apply ``tx.update`` to each gradient tree in turn (one jitted lax.scan); stacked outputs."""
    stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *grads_seq)
    first = jax.tree.map(lambda x: x[0], stacked)
    params = first if params is None else params

    @jax.jit
    def scan(stacked_grads):
        def body(state, g):
            updates, state = tx.update(g, state, params)
            return state, updates

        return jax.lax.scan(body, tx.init(params), stacked_grads)

    state, updates = scan(stacked)
    return updates, state


def reference_per_leaf(ref_fn, grads_seq, **kwargs):
    """Run a NumPy reference on each leaf of the gradient trees; stacked like ``run_updates``."""
    keys = grads_seq[0].keys()
    return {k: np.stack(ref_fn([g[k] for g in grads_seq], **kwargs)) for k in keys}


def assert_normwise_close(ours, ref, rtol):
    """Per step and leaf: ||ours - ref|| <= rtol * ||ref||."""
    for k in ref:
        a = np.asarray(ours[k], np.complex128 if np.iscomplexobj(ref[k]) else np.float64)
        b = ref[k]
        for t in range(b.shape[0]):
            err = np.linalg.norm(a[t] - b[t])
            scale = np.linalg.norm(b[t])
            assert err <= rtol * scale + 1e-300, (
                f"leaf {k!r} step {t + 1}: normwise error {err / max(scale, 1e-300):.3e} > {rtol}"
            )


def param_trajectory(tx, grads_seq, params0):
    """Apply ``tx`` and ``optax.apply_updates`` along a gradient sequence (one jitted scan).

    Returns the stacked parameters after every step and the final optimizer state."""
    stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *grads_seq)

    @jax.jit
    def run(stacked_grads):
        def body(carry, g):
            params, state = carry
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), params

        (_, state), thetas = jax.lax.scan(body, (params0, tx.init(params0)), stacked_grads)
        return thetas, state

    return run(stacked)


def minimize(tx, loss, x0, steps):
    """``steps`` updates of ``tx`` on the gradient of ``loss`` from ``x0`` (one jitted scan)."""

    @jax.jit
    def run(x):
        def body(carry, _):
            x, state = carry
            updates, state = tx.update(jax.grad(loss)(x), state, x)
            return (optax.apply_updates(x, updates), state), None

        (x, _), _ = jax.lax.scan(body, (x, tx.init(x)), None, length=steps)
        return x

    return run(x0)


@functools.lru_cache(maxsize=64)
def _jitted_step(tx):
    """One jitted step per transformation (it is hashable): tests that train the same ``tx``
    several times compile it once."""

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def train(tx, params, state, grads_seq):
    """Apply ``tx`` to ``params`` for each gradient tree in turn, one jitted step at a time;
    returns the final ``(params, state)``."""
    step = _jitted_step(tx)
    for grads in grads_seq:
        params, state = step(params, state, grads)
    return params, state
