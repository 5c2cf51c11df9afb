"""Shared test utilities: run a transformation over a gradient sequence, compare with a reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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
