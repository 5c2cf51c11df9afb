"""flat_moments: the same updates as the default layout, in one buffer per dtype group.

The reference is the default (leaf-by-leaf) layout of the same optimizer and, for the math
itself, optax; every comparison feeds both layouts the same gradients and parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adam_jax


def _params(n_leaves=5):
    rng = np.random.default_rng(0)
    params = {
        f"w{i}": jnp.asarray(rng.normal(size=(3 + i, 2)), jnp.float32) for i in range(n_leaves)
    }
    params["bias"] = jnp.asarray(rng.normal(size=(7,)), jnp.bfloat16)
    params["scalar"] = jnp.float32(0.5)
    params["empty"] = jnp.zeros((0, 3), jnp.float32)
    params["none"] = None
    return params


def _grads(params, step):
    rng = np.random.default_rng(100 + step)
    return jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=jnp.shape(p)) * 10.0 ** rng.integers(-3, 2), p.dtype),
        params,
    )


def _assert_close(flat, default, grads):
    """Updates of the flat layout against the default's: float32 to rounding, in the gradient's
    dtype (a bfloat16 update rounds a float32 value, so it may land one bfloat16 step apart)."""
    assert jax.tree.structure(flat) == jax.tree.structure(default)
    for (path, x), y, g in zip(
        jax.tree_util.tree_leaves_with_path(flat),
        jax.tree.leaves(default),
        jax.tree.leaves(grads),
        strict=True,
    ):
        assert x.dtype == g.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
        rtol = 1e-5 if x.dtype == jnp.float32 else 2**-7
        x32, y32 = np.asarray(x, np.float32), np.asarray(y, np.float32)
        scale = float(
            np.max(np.abs(y32), initial=0.0)
        )  # an update near 0 is m near 0: cancellation
        np.testing.assert_allclose(x32, y32, rtol=rtol, atol=rtol * scale)


def _moments(state):
    is_adam = lambda n: isinstance(n, adam_jax.ScaleByAdamState | adam_jax.ScaleByAdamaxState)
    nodes = [n for n in jax.tree.leaves(state, is_leaf=is_adam) if is_adam(n)]
    return [
        (f, getattr(n, f))
        for n in nodes
        for f in ("mu", "nu", "nu_max")
        if getattr(n, f, None) is not None
    ]


def _flat_view(tree):
    """The default layout's moments as the flat layout stores them (tree order, per group)."""
    leaves = [x for x in jax.tree.leaves(tree)]
    return jnp.concatenate([x.astype(jnp.float32).ravel() for x in leaves])


OPTIMIZERS = {
    "adam": lambda: adam_jax.adam(1e-2),
    "adam-amsgrad-nesterov": lambda: adam_jax.adam(1e-2, amsgrad=True, nesterov=True),
    "adam-eps_hat-b1_decay": lambda: adam_jax.adam(1e-2, eps_hat=True, b1_decay=0.99),
    "adamax": lambda: adam_jax.adamax(2e-2),
    "adamw": lambda: adam_jax.adamw(1e-2, weight_decay=0.1),  # reads the (flattened) params
    "chain-clip-schedule": lambda: optax.chain(
        optax.clip_by_global_norm(1.0),
        adam_jax.scale_by_adam(),
        optax.scale_by_learning_rate(adam_jax.inverse_sqrt_schedule(1e-2)),
    ),
    "inject_hyperparams": lambda: optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-2),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_same_updates_and_moments_as_the_default_layout(name, jit):
    params = _params()
    if name == "chain-clip-schedule":  # optax sums a bfloat16 leaf's squares in bfloat16 for the
        del params["bias"]  # global norm; the flat buffer has it in float32 (0.4% apart)
    default, flat = OPTIMIZERS[name](), adam_jax.flat_moments(OPTIMIZERS[name]())
    s_default, s_flat = default.init(params), flat.init(params)
    update_default = jax.jit(default.update) if jit else default.update
    update_flat = jax.jit(flat.update) if jit else flat.update
    for step in range(6):
        grads = _grads(params, step)
        u_default, s_default = update_default(grads, s_default, params)
        u_flat, s_flat = update_flat(grads, s_flat, params)
        # The same formulas on the same numbers, but not the same machine code: XLA:CPU
        # vectorizes a long flat buffer differently from small leaves, so results can differ in
        # the last bits (measured: up to 11 ulp after 6 steps, 1.3e-6 relative).
        _assert_close(u_flat, u_default, grads)
        params = optax.apply_updates(params, u_default)
    flat_moments, default_moments = _moments(s_flat), _moments(s_default)
    assert [f for f, _ in flat_moments] == [f for f, _ in default_moments]
    for (field, tree), (_, reference) in zip(flat_moments, default_moments, strict=True):
        assert set(tree) == {"float32"}, field  # float32 and bfloat16 leaves: one buffer
        expected = np.asarray(_flat_view(reference))
        np.testing.assert_allclose(
            np.asarray(tree["float32"]), expected, rtol=1e-5, atol=1e-5 * np.max(np.abs(expected))
        )


def test_matches_optax_adam():
    params = _params(3)
    del params["none"], params["bias"]  # optax keeps a bfloat16 parameter's moments in bfloat16
    tx, reference = adam_jax.flat_moments(adam_jax.adam(1e-2)), optax.adam(1e-2)
    s, r = tx.init(params), reference.init(params)
    for step in range(5):
        grads = _grads(params, step)
        u, s = jax.jit(tx.update)(grads, s, params)
        v, r = jax.jit(reference.update)(grads, r, params)
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v), strict=True):
            np.testing.assert_allclose(
                np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2e-5, atol=1e-9
            )


def test_many_leaves_become_a_few_buffers():
    params = {f"layer{i}": {"w": jnp.ones((4, 4)), "b": jnp.zeros((4,))} for i in range(100)}
    tx = adam_jax.flat_moments(adam_jax.adam(1e-3, amsgrad=True))
    state = tx.init(params)
    arrays = [x for x in jax.tree.leaves(state) if hasattr(x, "shape") and x.size > 1]
    assert [x.shape for x in arrays] == [(2000,)] * 3  # mu, nu, nu_max: one buffer each
    default = adam_jax.adam(1e-3, amsgrad=True).init(params)
    assert adam_jax.quantize.state_bytes(state) == adam_jax.quantize.state_bytes(default)


def test_large_leaves_keep_their_own_buffers():
    params = {"big": jnp.ones((300, 300)), "small": jnp.ones((4,)), "tiny": jnp.ones((2, 2))}
    grads = jax.tree.map(lambda p: p * 0.3, params)
    for max_leaf_size, keys in [(2**16, {"['big']", "float32"}), (None, {"float32"})]:
        tx = adam_jax.flat_moments(adam_jax.adam(1e-2), max_leaf_size=max_leaf_size)
        state = tx.init(params)
        mu = state.inner_state[0].mu
        assert set(mu) == keys
        if "['big']" in mu:
            assert mu["['big']"].shape == (300, 300) and mu["float32"].shape == (8,)
        updates, _ = jax.jit(tx.update)(grads, state, params)
        reference, _ = adam_jax.adam(1e-2).update(grads, adam_jax.adam(1e-2).init(params))
        for k in params:
            np.testing.assert_allclose(np.asarray(updates[k]), np.asarray(reference[k]), rtol=1e-6)


def test_mixed_dtypes_get_one_buffer_per_compute_dtype():
    params = {
        "a": jnp.ones((3,), jnp.float32),
        "b": jnp.ones((2,), jnp.float16),
        "c": jnp.ones((2, 2), jnp.complex64),
        "d": jnp.ones((5,), jnp.bfloat16),
    }
    tx = adam_jax.flat_moments(adam_jax.adam(1e-2))
    state = tx.init(params)
    mu = state.inner_state[0].mu
    assert {k: (v.shape, v.dtype) for k, v in mu.items()} == {
        "float32": ((10,), jnp.float32),
        "complex64": ((4,), jnp.complex64),
    }
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.3, p.dtype), params)
    updates, _ = jax.jit(tx.update)(grads, state, params)
    reference, _ = adam_jax.adam(1e-2).update(grads, adam_jax.adam(1e-2).init(params), params)
    for k in params:
        assert updates[k].dtype == params[k].dtype
        np.testing.assert_allclose(np.asarray(updates[k]), np.asarray(reference[k]), rtol=1e-6)


def test_composes_with_masked_and_monitor():
    params = _params()
    del params["none"]
    mask = {k: not k.startswith("w1") for k in params}
    flat = adam_jax.monitor(optax.masked(adam_jax.flat_moments(adam_jax.adam(1e-2)), mask))
    default = adam_jax.monitor(optax.masked(adam_jax.adam(1e-2), mask))
    s_flat, s_default = flat.init(params), default.init(params)
    for step in range(3):
        grads = _grads(params, step)
        u_flat, s_flat = jax.jit(flat.update)(grads, s_flat, params)
        u_default, s_default = jax.jit(default.update)(grads, s_default, params)
        _assert_close(u_flat, u_default, grads)
    np.testing.assert_array_equal(np.asarray(u_flat["w1"]), np.asarray(grads["w1"]))  # masked out
    stats_flat, stats_default = adam_jax.step_stats(s_flat), adam_jax.step_stats(s_default)
    for key, value in stats_default.items():
        np.testing.assert_allclose(
            np.asarray(stats_flat[key]), np.asarray(value), rtol=1e-3, err_msg=key
        )


def test_eight_bit_moments_inside_flat_moments():
    params = {
        f"w{i}": jnp.asarray(np.random.default_rng(i).normal(size=(64, 32)), jnp.float32)
        for i in range(20)
    }
    tx = adam_jax.flat_moments(adam_jax.quantized_moments(adam_jax.adam(1e-2), min_size=0))
    state = tx.init(params)
    n = sum(x.size for x in jax.tree.leaves(params))
    assert adam_jax.quantize.state_bytes(state) / n < 2.1
    target = jax.tree.map(lambda p: p * 0.5, params)
    loss = lambda p: sum(
        jnp.sum((a - b) ** 2)
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target), strict=True)
    )

    def run(tx, params):
        state = tx.init(params)

        @jax.jit
        def step(p, s):
            u, s = tx.update(jax.grad(loss)(p), s, p)
            return optax.apply_updates(p, u), s

        for _ in range(150):
            params, state = step(params, state)
        return float(loss(params))

    start = float(loss(params))
    flat8, float32 = run(tx, params), run(adam_jax.adam(1e-2), params)
    assert flat8 < 0.05 * start and abs(flat8 - float32) < 0.1 * float32 + 1e-3 * start


def test_eight_bit_outside_flat_moments_is_refused_with_the_right_order():
    tx = adam_jax.quantized_moments(adam_jax.flat_moments(adam_jax.adam(1e-2)), min_size=0)
    with pytest.raises(ValueError, match=r"flat_moments\(quantized_moments\(tx\)\)"):
        tx.init({"w": jnp.ones((4, 4))})


def test_checkpoint_resume_is_bit_identical(tmp_path):
    params = _params()
    del params["none"], params["empty"]
    tx = adam_jax.flat_moments(adam_jax.adam(1e-2, amsgrad=True))
    target = jax.tree.map(lambda p: p * 0.5, params)

    @jax.jit
    def step(p, s):
        grads = jax.grad(
            lambda q: sum(
                jnp.sum((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2)
                for a, b in zip(jax.tree.leaves(q), jax.tree.leaves(target), strict=True)
            )
        )(p)
        u, s = tx.update(grads, s, p)
        return optax.apply_updates(p, u), s

    p, s = params, tx.init(params)
    trajectory = []
    for t in range(6):
        if t == 3:
            adam_jax.save_checkpoint(tmp_path / "ckpt", p, s)
        p, s = step(p, s)
        trajectory.append((p, s))
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
    )
    rp, rs = adam_jax.restore_checkpoint(tmp_path / "ckpt", tx, abstract)
    for _ in range(3, 6):
        rp, rs = step(rp, rs)
    for a, b in zip(jax.tree.leaves((rp, rs)), jax.tree.leaves(trajectory[-1]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=str)
def test_state_sharding_on_a_mesh(axis_type):
    mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(axis_type, axis_type))
    rng = np.random.default_rng(0)
    host = {"w": rng.normal(size=(8, 4)), "b": rng.normal(size=(4,)), "r": rng.normal(size=(3,))}
    specs = {"w": P("x", "y"), "b": P(), "r": P()}
    params = {
        k: jax.device_put(jnp.asarray(v, jnp.float32), NamedSharding(mesh, specs[k]))
        for k, v in host.items()
    }
    tx = adam_jax.flat_moments(adam_jax.adam(1e-2))
    shardings = adam_jax.state_sharding(tx, params)
    with jax.set_mesh(mesh):
        state = jax.jit(tx.init, out_shardings=shardings)(params)
        grads = jax.tree.map(lambda p: p * 0.1, params)
        updates, state = jax.jit(tx.update)(grads, state, params)
    mu = state.inner_state[0].mu
    if axis_type == AxisType.Explicit:  # the sharded leaf keeps its own buffer and sharding
        assert set(mu) == {"['w']", "float32"}
        assert mu["['w']"].sharding.is_equivalent_to(params["w"].sharding, 2)
        assert mu["float32"].shape == (7,)
    else:  # shardings are not visible while tracing on Auto axes: one buffer, XLA places it
        assert set(mu) == {"float32"} and mu["float32"].shape == (39,)
    for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    single = {k: jnp.asarray(v, jnp.float32) for k, v in host.items()}
    reference, _ = adam_jax.adam(1e-2).update(
        jax.tree.map(lambda p: p * 0.1, single), adam_jax.adam(1e-2).init(single), single
    )
    for k in host:
        np.testing.assert_allclose(np.asarray(updates[k]), np.asarray(reference[k]), rtol=1e-6)


def test_bad_arguments():
    with pytest.raises(
        TypeError, match=r"flat_moments: tx must be an optax\.GradientTransformation"
    ):
        adam_jax.flat_moments(lambda p: p)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match=r"max_leaf_size=.* integer >= 0 or None"):
            adam_jax.flat_moments(adam_jax.adam(1e-3), max_leaf_size=bad)
    with pytest.raises(TypeError, match=r"parameter leaf \['n'\] has dtype int32"):
        adam_jax.flat_moments(adam_jax.adam(1e-3)).init({"n": jnp.ones(3, jnp.int32)})
    tx = adam_jax.flat_moments(adam_jax.adam(1e-3))
    params = {"w": jnp.ones(3)}
    with pytest.raises(TypeError, match="FlatMomentsState"):
        tx.update(params, adam_jax.adam(1e-3).init(params), params)
