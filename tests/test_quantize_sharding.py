"""8-bit moments on a mesh and in checkpoints.

On Auto and Explicit meshes of 8 virtual CPU devices the codes are sharded exactly like their
parameters and the scales along the parameters' leading axes, as ``state_sharding`` says; each
device holds only its share; the numbers equal an unsharded run. A checkpoint saved mid-run and
restored (onto one device, or straight into the ``state_sharding`` layout of a mesh) continues
bit-identically to the run that never stopped; so do ``optax.masked`` states.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adam_jax
from adam_jax.quantize import QuantizedMoment

SPECS = {"w": P("x", "y"), "e": P(None, "y"), "b": P("y"), "s": P("x", None), "r": P()}
SHAPES = {"w": (16, 1024), "e": (8, 512), "b": (1024,), "s": (64, 10), "r": (3,)}

OPTIMIZERS = {
    "adam": lambda: adam_jax.quantized_moments(adam_jax.adam(1e-2), min_size=0),
    "amsgrad-schedule": lambda: adam_jax.quantized_moments(
        adam_jax.adam(adam_jax.inverse_sqrt_schedule(1e-2), amsgrad=True), block_size=64, min_size=0
    ),
    "adamax": lambda: adam_jax.quantized_moments(adam_jax.adamax(1e-2), min_size=0),
    # "s" and "r" are under min_size: float32 moments beside 8-bit ones
    "mixed": lambda: adam_jax.quantized_moments(adam_jax.adam(1e-2), min_size=1000),
}


def _host():
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _grads(step):
    rng = np.random.default_rng(100 + step)
    return {
        k: (rng.normal(size=s) * 10.0 ** rng.uniform(-2, 1)).astype(np.float32)
        for k, s in SHAPES.items()
    }


def _place(tree, mesh):
    if mesh is None:
        return jax.device_put(tree, jax.devices()[0])
    return {k: jax.device_put(v, NamedSharding(mesh, SPECS[k])) for k, v in tree.items()}


def _step(tx):
    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def _assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), jax.tree_util.keystr(path))


def _assert_same_numbers(a, b):
    """Equal up to float32 rounding: XLA may contract a multiply-add differently in the sharded
    and the single-device program (1 ulp), which can move a stochastically rounded code by 1."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        x, y = np.asarray(x), np.asarray(y)
        if np.issubdtype(x.dtype, np.integer):
            assert np.max(np.abs(x.astype(np.int32) - y.astype(np.int32)), initial=0) <= 1
            assert np.mean(x != y) < 0.02, jax.tree_util.keystr(path)
        else:
            np.testing.assert_allclose(
                x, y, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path)
            )


def _assert_layout(state, expected):
    for (path, leaf), sharding in zip(
        jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(expected), strict=True
    ):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (
            f"{jax.tree_util.keystr(path)}: {leaf.sharding} vs state_sharding {sharding}"
        )


def _quantized(state):
    return [
        n
        for n in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, QuantizedMoment))
        if isinstance(n, QuantizedMoment)
    ]


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=str)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_is_partitioned_like_the_parameters(name, axis_type):
    tx = OPTIMIZERS[name]()
    mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(axis_type, axis_type))
    host = _host()
    ref_params, ref_state = _place(host, None), None
    with jax.set_mesh(mesh):
        params = _place(host, mesh)
        layout = adam_jax.state_sharding(tx, params)
        _assert_layout(jax.jit(tx.init)(params), layout)  # a plain jit follows the params
        state = jax.jit(tx.init, out_shardings=layout)(params)
        step = _step(tx)
        for t in range(3):
            params, state = step(params, state, _place(_grads(t), mesh))
        _assert_layout(state, layout)
    # Every moment's codes are sharded exactly like its parameter; the scales along the leading
    # axes (and the block axis where shards hold whole blocks): one device, its share.
    moments = _quantized(state)
    stored = sorted(k for k in SHAPES if name != "mixed" or math.prod(SHAPES[k]) >= 1000)
    assert len(moments) == len(stored) * (3 if "amsgrad" in name else 2)
    for q, k in zip(moments, stored * 3, strict=False):
        assert q.codes.sharding.is_equivalent_to(params[k].sharding, params[k].ndim)
        shard = q.codes.addressable_shards[0].data.shape
        assert shard == params[k].addressable_shards[0].data.shape
    w = _quantized(state)[-1]  # a moment of ['w'], (16, 1024) over (x: 4, y: 2)
    blocks = 1024 // w.block_size
    assert w.scales.addressable_shards[0].data.shape == (16 // 4, blocks // 2)
    # The numbers are those of the same steps on one device.
    step = _step(tx)
    ref_state = tx.init(ref_params)
    for t in range(3):
        ref_params, ref_state = step(ref_params, ref_state, _place(_grads(t), None))
    _assert_same_numbers(params, ref_params)
    _assert_same_numbers(state, ref_state)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=str)
def test_eager_init_is_partitioned_like_the_parameters(axis_type):
    tx = adam_jax.quantized_moments(adam_jax.adam(1e-2), min_size=0)
    mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(axis_type, axis_type))
    with jax.set_mesh(mesh):
        params = _place(_host(), mesh)
        _assert_layout(tx.init(params), adam_jax.state_sharding(tx, params))


CHECKPOINTED = {
    **OPTIMIZERS,
    "masked-adam": lambda: optax.masked(adam_jax.adam(1e-2), {k: k != "r" for k in SHAPES}),
    "partition-8bit": lambda: optax.partition(
        {
            "8bit": adam_jax.quantized_moments(adam_jax.adam(1e-2), min_size=0),
            "frozen": optax.set_to_zero(),
        },
        {k: "frozen" if k == "r" else "8bit" for k in SHAPES},
    ),
    "masked-8bit": lambda: optax.masked(
        adam_jax.quantized_moments(adam_jax.adam(1e-2), min_size=0), {k: k != "b" for k in SHAPES}
    ),
}


@pytest.mark.parametrize("on_mesh", [False, True], ids=["one-device", "mesh"])
@pytest.mark.parametrize("name", list(CHECKPOINTED))
def test_checkpoint_resume_is_bit_identical(tmp_path, name, on_mesh):
    tx = CHECKPOINTED[name]()
    mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Auto,) * 2) if on_mesh else None
    host = _host()
    step = _step(tx)
    params = _place(host, mesh)
    layout = adam_jax.state_sharding(tx, params)
    state = jax.jit(tx.init, out_shardings=layout)(params)
    trajectory = []
    for t in range(6):
        if t == 3:
            adam_jax.save_checkpoint(tmp_path / "ckpt", params, state)
        params, state = step(params, state, _place(_grads(t), mesh))
        trajectory.append((params, state))
    target = jax.tree.map(
        lambda v, a: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=a.sharding),
        host,
        _place(host, mesh),
    )
    r_params, r_state = adam_jax.restore_checkpoint(tmp_path / "ckpt", tx, target)
    _assert_layout(r_state, adam_jax.state_sharding(tx, target))
    for t in range(3, 6):
        r_params, r_state = step(r_params, r_state, _place(_grads(t), mesh))
        _assert_bitwise_equal(r_params, trajectory[t][0])
        _assert_bitwise_equal(r_state, trajectory[t][1])
