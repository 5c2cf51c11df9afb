"""Every state a user can build saves, restores (also straight onto a mesh, in the
``state_sharding`` layout) and continues bit-identically to a run that never stopped."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adam_jax

STATES = {
    "chain": lambda: optax.chain(optax.clip_by_global_norm(1.0), adam_jax.adam(1e-2)),
    "masked": lambda: optax.masked(adam_jax.adam(1e-2), lambda p: {k: k != "n" for k in p}),
    "partition": lambda: optax.partition(
        {"train": adam_jax.adam(1e-2), "frozen": optax.set_to_zero()},
        {"w": "train", "b": "train", "n": "frozen"},
    ),
    "inject_hyperparams": lambda: optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-2),
    "quantized_moments": lambda: adam_jax.quantized_moments(adam_jax.adam(1e-2), min_size=0),
    # "w" in 8 bits, "b" (under min_size) in float32
    "quantized_moments-mixed": lambda: adam_jax.quantized_moments(
        adam_jax.adam(1e-2), min_size=1000
    ),
    "monitor": lambda: adam_jax.monitor(adam_jax.adam(1e-2)),
    "temporal_averaging": lambda: optax.chain(
        adam_jax.adamax(1e-2), adam_jax.temporal_averaging(0.9)
    ),
    "kahan": lambda: optax.chain(adam_jax.adam(1e-2), adam_jax.kahan_summation()),
}
FROZEN_INT = {"masked", "partition"}  # the documented recipes for integer leaves in the tree


def _host_params(name):
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(8, 256)).astype(np.float32), "b": np.zeros(256, np.float32)}
    if name == "kahan":
        params = {k: v.astype(jnp.bfloat16) for k, v in params.items()}
    if name in FROZEN_INT:
        params["n"] = np.asarray(3, np.int32)
    return params


def _grads(params, t):
    def one(path, p):
        if jnp.issubdtype(jnp.result_type(p), jnp.integer):
            return jnp.zeros_like(p)
        return jnp.asarray(np.sin(np.arange(p.size).reshape(p.shape) * 0.37 + t), p.dtype)

    return jax.tree_util.tree_map_with_path(one, params)


def _steps(tx, params, state, ts):
    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for t in ts:
        params, state = step(params, state, _grads(params, t))
    return params, state


def _assert_identical(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("on_mesh", [False, True], ids=["one-device", "mesh"])
@pytest.mark.parametrize("name", list(STATES))
def test_save_restore_continue_is_bit_identical(tmp_path, name, on_mesh):
    tx = STATES[name]()
    host = _host_params(name)
    if on_mesh:
        mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Auto,) * 2)
        specs = {"w": P(None, "x"), "b": P("x"), "n": P()}
        params = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in host.items()}
    else:
        params = jax.tree.map(jnp.asarray, host)
    state = jax.jit(tx.init)(params)
    params, state = _steps(tx, params, state, range(3))
    adam_jax.save_checkpoint(tmp_path / "ckpt", params, state)
    want_params, want_state = _steps(tx, params, state, range(3, 6))

    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
    )
    r_params, r_state = adam_jax.restore_checkpoint(tmp_path / "ckpt", tx, target)
    layout = adam_jax.state_sharding(tx, target)
    for leaf, sharding in zip(jax.tree.leaves(r_state), jax.tree.leaves(layout), strict=True):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    got_params, got_state = _steps(tx, r_params, r_state, range(3, 6))
    _assert_identical(got_params, want_params)
    _assert_identical(got_state, want_state)
