"""Sharded state on a mesh (Auto and Explicit axes), state_sharding, pmap and shard_map.

The references are independent of the code under test: each parameter's own sharding (the state
must follow it) and the same optimizer run unsharded on one device (the numbers must not change).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

import adam_jax

# Every transformation that allocates moments, with default and non-default storage dtypes.
OPTIMIZERS = {
    "adam": lambda: adam_jax.adam(1e-2),
    "adam-amsgrad-bf16-f16": lambda: adam_jax.adam(
        1e-2, amsgrad=True, mu_dtype=jnp.bfloat16, nu_dtype=jnp.float16
    ),
    "adam-nesterov-eps_hat": lambda: adam_jax.adam(1e-2, nesterov=True, eps_hat=True),
    "adamax-bf16": lambda: adam_jax.adamax(1e-2, mu_dtype=jnp.bfloat16),
    "scale_by_adam-schedule": lambda: optax.chain(
        adam_jax.scale_by_adam(b1_decay=0.99),
        optax.scale_by_learning_rate(adam_jax.inverse_sqrt_schedule(1e-2)),
    ),
    "bias_correction": lambda: optax.chain(
        adam_jax.scale_by_adam(bias_correction=False), adam_jax.bias_correction(0.9)
    ),
}

SPECS = {"w": P("x", "y"), "b": P("y"), "r": P(), "c": P(None, "x")}


def _params_on(mesh, complex_leaf=True):
    rng = np.random.default_rng(0)
    host = {
        "w": rng.normal(size=(8, 4)).astype(np.float32),
        "b": rng.normal(size=(4,)).astype(np.float32),
        "r": rng.normal(size=(3,)).astype(np.float32),
        "c": (rng.normal(size=(2, 4)) + 1j * rng.normal(size=(2, 4))).astype(np.complex64),
    }
    if not complex_leaf:  # a mu_dtype/nu_dtype override is a real dtype: no complex parameters
        del host["c"]
    placed = {k: jax.device_put(v, NamedSharding(mesh, SPECS[k])) for k, v in host.items()}
    return host, placed


def _grads(host, step):
    """A deterministic gradient tree for ``step``, same dtypes and shapes as the parameters."""
    rng = np.random.default_rng(100 + step)
    out = {}
    for k, v in host.items():
        g = rng.normal(size=v.shape)
        if np.iscomplexobj(v):
            g = g + 1j * rng.normal(size=v.shape)
        out[k] = g.astype(v.dtype)
    return out


def _mesh(axis_type):
    return jax.make_mesh((4, 2), ("x", "y"), axis_types=(axis_type, axis_type))


def _moment_trees(state):
    """(name, tree) for every parameter-shaped tree in an adam_jax state, found by type."""
    found = []
    for node in jax.tree.leaves(
        state,
        is_leaf=lambda n: isinstance(n, adam_jax.ScaleByAdamState | adam_jax.ScaleByAdamaxState),
    ):
        if isinstance(node, adam_jax.ScaleByAdamState | adam_jax.ScaleByAdamaxState):
            for field in ("mu", "nu", "nu_max"):
                tree = getattr(node, field, None)
                if tree is not None:
                    found.append((field, tree))
    return found


def _assert_follows_params(state, params, expected_trees):
    trees = _moment_trees(state)
    assert len(trees) == expected_trees
    for field, tree in trees:
        for k, p in params.items():
            leaf = tree[k]
            assert leaf.shape == p.shape
            assert leaf.sharding.is_equivalent_to(p.sharding, p.ndim), (
                f"{field}[{k!r}]: {leaf.sharding} is not {p.sharding}"
            )


def _assert_matches_helper(state, helper):
    for (path, leaf), sharding in zip(
        jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(helper), strict=True
    ):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (
            f"{jax.tree_util.keystr(path)}: {leaf.sharding} vs state_sharding {sharding}"
        )


def _expected_trees(name):
    return 3 if "amsgrad" in name else 2


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=str)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_follows_param_sharding(name, axis_type):
    tx = OPTIMIZERS[name]()
    mesh = _mesh(axis_type)
    host, params = _params_on(mesh, complex_leaf="16" not in name)
    with jax.set_mesh(mesh):
        state = jax.jit(tx.init)(params)
        helper = adam_jax.state_sharding(tx, params)
        _assert_follows_params(state, params, _expected_trees(name))
        _assert_matches_helper(state, helper)

        @jax.jit
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        for t in range(3):
            params, state = step(params, state, _grads(host, t))
        _assert_follows_params(state, params, _expected_trees(name))
        _assert_matches_helper(state, helper)
        for k, p in params.items():
            assert p.sharding.is_equivalent_to(NamedSharding(mesh, SPECS[k]), p.ndim)

    # Same numbers as the unsharded computation on a single device.
    ref_params = jax.device_put(host, jax.devices()[0])
    ref_state = jax.jit(tx.init)(ref_params)
    ref_step = jax.jit(
        lambda p, s, g: (lambda u, s2: (optax.apply_updates(p, u), s2))(*tx.update(g, s, p))
    )
    for t in range(3):
        ref_params, ref_state = ref_step(ref_params, ref_state, _grads(host, t))
    chex.assert_trees_all_close(
        jax.device_get(params), jax.device_get(ref_params), rtol=1e-6, atol=0
    )
    chex.assert_trees_all_close(jax.device_get(state), jax.device_get(ref_state), rtol=1e-6, atol=0)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_state_sharding_ahead_of_time(jit):
    """The helper from abstract parameters, used as out_shardings; eager init agrees too."""
    tx = OPTIMIZERS["adam-amsgrad-bf16-f16"]()
    mesh = _mesh(AxisType.Auto)
    _, params = _params_on(mesh, complex_leaf=False)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
    )
    shardings = adam_jax.state_sharding(tx, abstract)
    scale_state = shardings[0]
    for field in ("mu", "nu", "nu_max"):
        for k in params:
            assert getattr(scale_state, field)[k] == NamedSharding(mesh, SPECS[k])
    assert scale_state.count == NamedSharding(mesh, P())
    if jit:
        state = jax.jit(tx.init, out_shardings=shardings)(params)
        _assert_matches_helper(state, shardings)
    else:
        state = tx.init(params)
    _assert_follows_params(state, params, 3)


def test_state_sharding_single_device_and_errors():
    tx = adam_jax.adam()
    device = jax.devices()[1]
    params = {"w": jax.device_put(jnp.ones((3, 2)), device)}
    shardings = adam_jax.state_sharding(tx, params)
    assert all(s == SingleDeviceSharding(device) for s in jax.tree.leaves(shardings))
    with pytest.raises(ValueError, match=r"parameter leaf \['w'\].*has no sharding"):
        adam_jax.state_sharding(tx, {"w": jax.ShapeDtypeStruct((3, 2), jnp.float32)})
    mesh = _mesh(AxisType.Auto)
    mixed = {"w": params["w"], "v": jax.device_put(jnp.ones(4), NamedSharding(mesh, P("x")))}
    with pytest.raises(ValueError, match="NamedSharding on one mesh or all on one device"):
        adam_jax.state_sharding(tx, mixed)


# ---- data parallel with pmap and shard_map, against one device on the whole batch ----

N_DEV, PER_DEV, STEPS = 8, 4, 5


def _regression():
    rng = np.random.default_rng(7)
    xs = rng.normal(size=(STEPS, N_DEV * PER_DEV, 3)).astype(np.float32)
    ys = rng.normal(size=(STEPS, N_DEV * PER_DEV, 2)).astype(np.float32)
    params = {"w": np.zeros((3, 2), np.float32), "b": np.zeros((2,), np.float32)}
    return params, xs, ys


def _loss(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _single_device(tx, params, xs, ys):
    @jax.jit
    def step(params, state, x, y):
        updates, state = tx.update(jax.grad(_loss)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for x, y in zip(xs, ys, strict=True):
        params, state = step(params, state, x, y)
    return params


@pytest.mark.parametrize(
    "make_tx", [OPTIMIZERS["adam"], OPTIMIZERS["adamax-bf16"]], ids=["adam", "adamax"]
)
def test_pmap_pmean_keeps_replicas_identical(make_tx):
    tx = make_tx()
    params, xs, ys = _regression()

    def step(params, state, x, y):
        grads = jax.lax.pmean(jax.grad(_loss)(params, x, y), "batch")
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    pstep = jax.pmap(step, axis_name="batch")
    replicated = jax.tree.map(lambda a: np.broadcast_to(a, (N_DEV, *a.shape)), params)
    state = jax.pmap(tx.init)(replicated)
    for x, y in zip(xs, ys, strict=True):
        shard = lambda a: a.reshape(N_DEV, PER_DEV, *a.shape[1:])
        replicated, state = pstep(replicated, state, shard(x), shard(y))
    out = jax.device_get(replicated)
    for k, v in out.items():
        for i in range(1, N_DEV):
            np.testing.assert_array_equal(v[i], v[0], err_msg=f"replica {i} of {k!r} diverged")
    ref = _single_device(tx, params, xs, ys)
    chex.assert_trees_all_close(jax.tree.map(lambda v: v[0], out), ref, rtol=1e-5, atol=1e-6)


def test_shard_map_data_parallel():
    tx = OPTIMIZERS["adam"]()
    params, xs, ys = _regression()
    mesh = jax.make_mesh((N_DEV,), ("batch",), axis_types=(AxisType.Auto,))

    def local_step(params, state, x, y):
        grads = jax.lax.pmean(jax.grad(_loss)(params, x, y), "batch")
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    init = jax.jit(jax.shard_map(tx.init, mesh=mesh, in_specs=P(), out_specs=P()))
    step = jax.jit(
        jax.shard_map(
            local_step, mesh=mesh, in_specs=(P(), P(), P("batch"), P("batch")), out_specs=(P(), P())
        )
    )
    state = init(params)
    p = params
    for x, y in zip(xs, ys, strict=True):
        p, state = step(p, state, x, y)
    ref = _single_device(tx, params, xs, ys)
    chex.assert_trees_all_close(jax.device_get(p), ref, rtol=1e-5, atol=1e-6)


def test_shard_map_fully_sharded_update():
    """Adam is elementwise: updating each device's shard of params/grads/state is the full update."""
    tx = adam_jax.adam(1e-2, amsgrad=True)
    mesh = jax.make_mesh((N_DEV,), ("d",), axis_types=(AxisType.Auto,))
    rng = np.random.default_rng(3)
    params = {"w": rng.normal(size=(16, 3)).astype(np.float32)}
    grads = [{"w": rng.normal(size=(16, 3)).astype(np.float32)} for _ in range(3)]

    def local(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    spec = P("d")
    record = jax.eval_shape(tx.init, params)[0].hyperparams  # scalars: replicated
    record_specs = {name: P() for name in record}
    state_specs = (
        adam_jax.ScaleByAdamState(P(), spec, spec, spec, record_specs),
        optax.EmptyState(),
    )
    init = jax.jit(jax.shard_map(tx.init, mesh=mesh, in_specs=spec, out_specs=state_specs))
    step = jax.jit(
        jax.shard_map(
            local, mesh=mesh, in_specs=(spec, state_specs, spec), out_specs=(spec, state_specs)
        )
    )
    p, state = params, init(params)
    ref_step = jax.jit(local)  # the same update on one device, unsharded
    ref_p, ref_state = params, tx.init(params)
    for g in grads:
        p, state = step(p, state, g)
        ref_p, ref_state = ref_step(ref_p, ref_state, g)
    assert state[0].mu["w"].sharding.is_equivalent_to(NamedSharding(mesh, spec), 2)
    chex.assert_trees_all_close(jax.device_get(p), jax.device_get(ref_p), rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(
        jax.device_get(state), jax.device_get(ref_state), rtol=1e-5, atol=1e-7
    )
