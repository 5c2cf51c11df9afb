"""flat_moments: reported failures, each reproduced (compositions, masks, dtypes, checkpoints).

References are the default layout of the same optimizer, or optax; a refusal is checked for the
message that names the cause and the fix.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adam_jax

pytest.importorskip("orbax.checkpoint")


def _params():
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
        "s": jnp.float32(0.5),
    }


def _loss(p):
    return sum(jnp.sum((x - 0.3) ** 2) for x in jax.tree.leaves(p))


def _runner(tx):
    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(_loss)(p), s, p)
        return optax.apply_updates(p, u), s

    return step


def _abstract(params):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
    )


MASK = {"w": True, "b": True, "s": False}
COMPOSITIONS = {
    "monitor(flat)": lambda: adam_jax.monitor(adam_jax.flat_moments(adam_jax.adam(1e-2)), every=1),
    "monitor(masked(flat))": lambda: adam_jax.monitor(
        optax.masked(adam_jax.flat_moments(adam_jax.adam(1e-2)), MASK), every=1
    ),
    "masked(monitor(flat))": lambda: optax.masked(
        adam_jax.monitor(adam_jax.flat_moments(adam_jax.adam(1e-2)), every=1), MASK
    ),
}


@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_monitor_compositions_restore_and_resume_bit_identically(name, tmp_path):
    # Was: state_sharding and restore_checkpoint raised "monitor: expected exactly one
    # ScaleByAdamState ... found 0" (tree_map_params probes init with a placeholder).
    tx = COMPOSITIONS[name]()
    params = _params()
    shardings = adam_jax.state_sharding(tx, params)
    state = tx.init(params)
    assert jax.tree.structure(shardings) == jax.tree.structure(state)
    step = _runner(tx)
    p, s = params, state
    for t in range(5):
        if t == 2:
            adam_jax.save_checkpoint(tmp_path / "ckpt", p, s)
        p, s = step(p, s)
    rp, rs = adam_jax.restore_checkpoint(tmp_path / "ckpt", tx, _abstract(params))
    for _ in range(2, 5):
        rp, rs = step(rp, rs)
    assert jax.tree.structure((rp, rs)) == jax.tree.structure((p, s))
    for a, b in zip(jax.tree.leaves((rp, rs)), jax.tree.leaves((p, s)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _ndim_mask(p):
    return jax.tree.map(lambda x: x.ndim > 1, p)


@pytest.mark.parametrize(
    "make",
    [
        lambda: adam_jax.adamw(1e-2, weight_decay=5.0, mask=_ndim_mask),
        lambda: optax.masked(adam_jax.adam(1e-2), _ndim_mask),
        lambda: optax.partition(
            {"a": adam_jax.adam(1e-2), "b": optax.set_to_zero()},
            lambda p: jax.tree.map(lambda x: "a" if x.ndim > 1 else "b", p),
        ),
    ],
    ids=["adamw-callable-mask", "masked-callable", "partition-callable"],
)
def test_masks_inside_are_refused_with_the_fix(make):
    # Was: the mask saw the flat 1-D buffers, so adamw lost its decay (update -0 instead of
    # -0.05) and a masked-in matrix got its raw gradient (1.0 instead of about -0.01).
    with pytest.raises(ValueError, match=r"(?s)mask or per-leaf labels.*optax\.masked\(adam_jax"):
        adam_jax.flat_moments(make()).init(_params())


def test_the_shown_fix_for_adamw_gives_adamw_updates():
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones((2,))}
    zeros = jax.tree.map(jnp.zeros_like, params)
    fixed = optax.chain(
        adam_jax.flat_moments(adam_jax.scale_by_adam()),
        optax.add_decayed_weights(5.0, _ndim_mask),
        optax.scale_by_learning_rate(1e-2),
    )
    u, _ = fixed.update(zeros, fixed.init(params), params)
    np.testing.assert_allclose(np.asarray(u["w"]), -0.05)  # -lr * wd * p
    np.testing.assert_array_equal(np.asarray(u["b"]), 0.0)
    masked = optax.masked(adam_jax.flat_moments(adam_jax.adam(1e-2)), _ndim_mask)
    u, _ = masked.update(jax.tree.map(jnp.ones_like, params), masked.init(params), params)
    np.testing.assert_allclose(np.asarray(u["w"]), -0.01, rtol=1e-5)  # Adam's first step
    np.testing.assert_array_equal(np.asarray(u["b"]), 1.0)  # masked out: the gradient


def _same_as_default(params, grads):
    flat, default = adam_jax.flat_moments(adam_jax.adam(1e-2)), adam_jax.adam(1e-2)
    s_flat, s_default = flat.init(params), default.init(params)
    for _ in range(3):
        u_flat, s_flat = jax.jit(flat.update)(grads, s_flat, params)
        u_default, s_default = jax.jit(default.update)(grads, s_default, params)
        for a, b in zip(jax.tree.leaves(u_flat), jax.tree.leaves(u_default), strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    with pytest.raises(ValueError, match=r"Pass the parameters to update.*params\)"):
        flat.update(grads, s_flat)


def test_float64_params_with_float32_grads():
    with jax.enable_x64(True):
        params = {"w": jnp.ones((3, 2), jnp.float64), "b": jnp.ones((2,), jnp.float32)}
        grads = {"w": jnp.full((3, 2), 0.3, jnp.float32), "b": jnp.full((2,), 0.2, jnp.float32)}
        _same_as_default(params, grads)


def test_complex_params_with_real_grads():
    params = {"z": jnp.ones((3,), jnp.complex64), "b": jnp.ones((2,), jnp.float32)}
    grads = {"z": jnp.full((3,), 0.3, jnp.float32), "b": jnp.full((2,), 0.2, jnp.float32)}
    _same_as_default(params, grads)


def test_numpy_integers_are_accepted_as_max_leaf_size():
    params = {"big": jnp.ones((2, 3)), "small": jnp.ones((4,))}
    tx = adam_jax.flat_moments(adam_jax.adam(1e-2), max_leaf_size=np.int64(5))
    assert set(tx.init(params).inner_state[0].mu) == {"['big']", "float32"}
    for bad in (np.bool_(True), np.float64(5.0), "5"):
        with pytest.raises(ValueError, match=r"max_leaf_size=.* integer >= 0 or None"):
            adam_jax.flat_moments(adam_jax.adam(1e-3), max_leaf_size=bad)


def test_hyperparameter_records_stay_out_of_the_buffers():
    params = {f"w{i}": jnp.ones((3,)) for i in range(4)}
    tx = adam_jax.flat_moments(adam_jax.adam(1e-2))
    state = tx.update(params, tx.init(params), params)[1]
    adam_state = state.inner_state[0]
    assert set(adam_state.mu) == {"float32"}
    assert all(jnp.shape(v) == () for v in adam_state.hyperparams.values())
    assert float(adam_state.hyperparams["learning_rate"]) == pytest.approx(1e-2)
    # "b1", a hyperparameter's name, is also NumPy's alias of bool: not a buffer key. Laid out
    # through the state_nodes protocol, the records are "other", the buffers a "group".
    placed = state.place(own=lambda path, x: "own", group=lambda x: "group", other="other")
    assert placed.inner_state[0].mu == {"float32": "group"}
    assert set(placed.inner_state[0].hyperparams.values()) == {"other"}


def test_tree_map_params_reaches_the_flat_moments():
    # Was: the function never reached the flat buffers (float32 moments left as they were).
    params = _params()
    for tx in (
        adam_jax.flat_moments(adam_jax.adam(1e-2)),
        adam_jax.monitor(optax.masked(adam_jax.flat_moments(adam_jax.adam(1e-2)), MASK)),
    ):
        state = tx.update(_params(), tx.init(params), params)[1]
        cast = optax.tree_utils.tree_map_params(tx, lambda m: m.astype(jnp.bfloat16), state)
        is_adam = lambda x: isinstance(x, adam_jax.ScaleByAdamState)
        (adam,) = [x for x in jax.tree.leaves(cast, is_leaf=is_adam) if is_adam(x)]
        (before,) = [x for x in jax.tree.leaves(state, is_leaf=is_adam) if is_adam(x)]
        for field in ("mu", "nu"):
            (buffer,) = getattr(adam, field).values()
            (original,) = getattr(before, field).values()
            assert buffer.dtype == jnp.bfloat16
            np.testing.assert_array_equal(  # the same cast as leaf by leaf
                np.asarray(buffer, np.float32),
                np.asarray(original.astype(jnp.bfloat16), np.float32),
            )
        assert adam.count.dtype == jnp.int32  # not a parameter: untouched
        jax.jit(tx.update)(_params(), cast, params)  # and training goes on


def test_tree_map_params_that_changes_shapes_is_refused_at_the_next_update():
    params = _params()
    tx = adam_jax.flat_moments(adam_jax.adam(1e-2))
    cut = optax.tree_utils.tree_map_params(tx, lambda m: m[:1], tx.init(params))
    with pytest.raises(ValueError, match=r"(?s)buffer 'float32' has shape \(1,\).*need \(16,\)"):
        tx.update(params, cut, params)
    with pytest.raises(ValueError, match=r"(?s)tree_map_params.*never shapes"):
        jax.jit(tx.update)(params, cut, params)


_HOST = {
    "w": np.linspace(-1.0, 1.0, 32, dtype=np.float32).reshape(8, 4),
    "b": np.array([0.1, -0.2, 0.3, -0.4], np.float32),
    "s": np.float32(0.5),
}


def _on_mesh():
    """The parameters on an Explicit 4 x 2 mesh: ``w`` split over both axes (a buffer of its own
    under flat_moments), ``b`` and ``s`` replicated (one group buffer)."""
    mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Explicit,) * 2)
    specs = {"w": P("x", "y"), "b": P(), "s": P()}
    return mesh, {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in _HOST.items()}


def _one_device():
    return {k: jnp.asarray(v) for k, v in _HOST.items()}


def _train(tx, p, s, steps, mesh=None):
    step = _runner(tx)
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        for _ in range(steps):
            p, s = step(p, s)
    return p, s


def _moment(state, field, params):
    """A moment as one array per parameter, read off the buffers by hand: a leaf's own buffer,
    or its slice of the group buffer (leaves in tree order: b, s, w)."""
    buffers = getattr(state.inner_state[0], field)
    out, start = {}, 0
    for name in sorted(params):
        own = f"[{name!r}]"
        if own in buffers:
            out[name] = np.asarray(buffers[own])
        else:
            size = int(np.size(params[name]))
            part = np.asarray(buffers["float32"])[start : start + size]
            out[name] = part.reshape(np.shape(params[name]))
            start += size
    return out


def test_explicit_mesh_checkpoint_resumes_bit_identically_on_the_same_mesh(tmp_path):
    mesh, params = _on_mesh()
    tx = adam_jax.flat_moments(adam_jax.adam(1e-2))
    with jax.set_mesh(mesh):
        state = jax.jit(tx.init)(params)
    p, s = _train(tx, params, state, 2, mesh)
    assert set(s.inner_state[0].mu) == {"['w']", "float32"}
    adam_jax.save_checkpoint(tmp_path / "ckpt", p, s)
    p_ref, s_ref = _train(tx, p, s, 3, mesh)
    rp, rs = adam_jax.restore_checkpoint(tmp_path / "ckpt", tx, _abstract(params))
    assert jax.tree.structure(rs) == jax.tree.structure(s)
    for a, b in zip(jax.tree.leaves((rp, rs)), jax.tree.leaves((p, s)), strict=True):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rp, rs = _train(tx, rp, rs, 3, mesh)
    for a, b in zip(jax.tree.leaves((rp, rs)), jax.tree.leaves((p_ref, s_ref)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("max_leaf_size", [2**16, None, 0], ids=lambda n: f"max_leaf_size={n}")
def test_explicit_mesh_checkpoint_restores_on_one_device(tmp_path, max_leaf_size):
    # Was: CheckpointMismatchError (the sharded leaf's own buffer is in the group on one device).
    mesh, params = _on_mesh()
    tx = adam_jax.flat_moments(adam_jax.adam(1e-2))
    with jax.set_mesh(mesh):
        state = jax.jit(tx.init)(params)
    p, s = _train(tx, params, state, 2, mesh)
    adam_jax.save_checkpoint(tmp_path / "ckpt", p, s)
    p_ref, s_ref = _train(tx, p, s, 3, mesh)

    single = _one_device()
    other = adam_jax.flat_moments(adam_jax.adam(1e-2), max_leaf_size=max_leaf_size)
    rp, rs = adam_jax.restore_checkpoint(tmp_path / "ckpt", other, single)
    assert jax.tree.structure(rs) == jax.tree.structure(other.init(single))
    device = jax.devices()[0]
    assert all(x.sharding.device_set == {device} for x in jax.tree.leaves((rp, rs)))
    for field in ("mu", "nu"):  # every parameter's moments, bit for bit
        restored, saved = _moment(rs, field, single), _moment(s, field, single)
        for name in single:
            np.testing.assert_array_equal(restored[name], saved[name], err_msg=name)
    rp, rs = _train(other, rp, rs, 3)  # continues as the run on the mesh, to float32 rounding
    for a, b in zip(jax.tree.leaves(rp), jax.tree.leaves(p_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    for field in ("mu", "nu"):
        restored, reference = _moment(rs, field, single), _moment(s_ref, field, single)
        for name in single:
            np.testing.assert_allclose(restored[name], reference[name], rtol=1e-6)


def test_one_device_checkpoint_restores_on_an_explicit_mesh(tmp_path):
    single = _one_device()
    tx = adam_jax.flat_moments(adam_jax.adam(1e-2))
    p, s = _train(tx, single, tx.init(single), 2)
    assert set(s.inner_state[0].mu) == {"float32"}
    adam_jax.save_checkpoint(tmp_path / "ckpt", p, s)
    mesh, params = _on_mesh()
    rp, rs = adam_jax.restore_checkpoint(tmp_path / "ckpt", tx, _abstract(params))
    shardings = adam_jax.state_sharding(tx, params)
    for leaf, sharding in zip(jax.tree.leaves(rs), jax.tree.leaves(shardings), strict=True):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    assert rs.inner_state[0].mu["['w']"].sharding.is_equivalent_to(params["w"].sharding, 2)
    for field in ("mu", "nu"):
        restored, saved = _moment(rs, field, single), _moment(s, field, single)
        for name in single:
            np.testing.assert_array_equal(restored[name], saved[name], err_msg=name)
    rp, rs = _train(tx, rp, rs, 1, mesh)
    p_ref, _ = _train(tx, p, s, 1)
    for a, b in zip(jax.tree.leaves(rp), jax.tree.leaves(p_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
