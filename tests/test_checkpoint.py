"""Save mid-run with orbax, restore (also onto a mesh) and continue: bit-identical trajectory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adam_jax

STEPS, SAVE_AT = 8, 3
SPECS = {"w": P("x", "y"), "b": P("y")}


def _problem():
    rng = np.random.default_rng(5)
    params = {"w": rng.normal(size=(8, 4)).astype(np.float32), "b": np.zeros((4,), np.float32)}
    x = rng.normal(size=(16, 8)).astype(np.float32)
    y = rng.normal(size=(16, 4)).astype(np.float32)
    return params, x, y


def _make_step(tx, x, y):
    def loss(params):
        return jnp.mean(jnp.tanh(x @ params["w"] + params["b"] - y) ** 2)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    return step


def _place(tree, mesh):
    if mesh is None:
        return jax.device_put(tree, jax.devices()[0])
    return {k: jax.device_put(v, NamedSharding(mesh, SPECS[k])) for k, v in tree.items()}


def _assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        assert x.dtype == y.dtype, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(
            np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path)
        )


OPTIMIZERS = {
    "adam": lambda: adam_jax.adam(1e-2),  # nu_max is None
    "adam-amsgrad-bf16": lambda: adam_jax.adam(1e-2, amsgrad=True, mu_dtype=jnp.bfloat16),
    "adamax-schedule": lambda: adam_jax.adamax(adam_jax.inverse_sqrt_schedule(1e-2)),
}


@pytest.mark.parametrize("on_mesh", [False, True], ids=["one-device", "mesh"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_resume_is_bit_identical(tmp_path, name, on_mesh):
    tx = OPTIMIZERS[name]()
    host, x, y = _problem()
    mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Auto,) * 2) if on_mesh else None
    step = _make_step(tx, x, y)

    # Uninterrupted run, saving (params, opt_state) after SAVE_AT steps.
    params = _place(host, mesh)
    state = jax.jit(tx.init)(params)
    trajectory = []
    for t in range(STEPS):
        if t == SAVE_AT:
            adam_jax.save_checkpoint(tmp_path / "ckpt", params, state, config={"name": name})
        params, state = step(params, state)
        trajectory.append(params)

    # A fresh start: restore onto abstract targets and continue.
    target = jax.tree.map(
        lambda v, k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=k),
        host,
        jax.tree.map(lambda a: a.sharding, _place(host, mesh)),
    )
    r_params, r_state = adam_jax.restore_checkpoint(
        tmp_path / "ckpt", tx, target, config={"name": name}
    )
    expected_sharding = adam_jax.state_sharding(tx, target)
    for leaf, sharding in zip(
        jax.tree.leaves(r_state), jax.tree.leaves(expected_sharding), strict=True
    ):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    for k, v in r_params.items():
        assert v.sharding.is_equivalent_to(target[k].sharding, v.ndim)
    for t in range(SAVE_AT, STEPS):
        r_params, r_state = step(r_params, r_state)
        _assert_bitwise_equal(r_params, trajectory[t])
    _assert_bitwise_equal(r_state, state)


def test_single_device_checkpoint_restores_onto_mesh(tmp_path):
    tx = OPTIMIZERS["adam-amsgrad-bf16"]()
    host, x, y = _problem()
    params = _place(host, None)
    params, state = _make_step(tx, x, y)(params, tx.init(params))
    adam_jax.save_checkpoint(tmp_path / "ckpt", params, state)
    mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Auto,) * 2)
    target = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=NamedSharding(mesh, SPECS[k]))
        for k, v in host.items()
    }
    r_params, r_state = adam_jax.restore_checkpoint(tmp_path / "ckpt", tx, target)
    _assert_bitwise_equal(r_params, params)
    _assert_bitwise_equal(r_state, state)
    for k in host:
        for field in ("mu", "nu", "nu_max"):
            leaf = getattr(r_state[0], field)[k]
            assert leaf.sharding.is_equivalent_to(NamedSharding(mesh, SPECS[k]), leaf.ndim), (
                field,
                k,
            )


MISMATCHES = [
    # (optimizer restored with, words the error must contain)
    (lambda: adam_jax.adamax(1e-2), ["checkpoint ScaleByAdamState, this run ScaleByAdamaxState"]),
    (lambda: adam_jax.adam(1e-2, amsgrad=True), ["opt_state leaf [0].nu_max['w']", "absent"]),
    (
        lambda: adam_jax.adam(1e-2, mu_dtype=jnp.bfloat16),
        ["[0].mu['w']: checkpoint float32[8, 4], this run bfloat16[8, 4]"],
    ),
    (
        lambda: adam_jax.adam(adam_jax.inverse_sqrt_schedule(1e-2)),
        ["learning_rate: checkpoint 0.01, this run a schedule"],
    ),
]


@pytest.mark.parametrize("case", range(len(MISMATCHES)))
def test_other_optimizer_configuration_is_refused(tmp_path, case):
    make_tx, words = MISMATCHES[case]
    host, _, _ = _problem()
    params = _place(host, None)
    adam_jax.save_checkpoint(tmp_path / "ckpt", params, adam_jax.adam(1e-2).init(params))
    with pytest.raises(adam_jax.CheckpointMismatchError, match="does not fit") as err:
        adam_jax.restore_checkpoint(tmp_path / "ckpt", make_tx(), params)
    for word in words:
        assert word in str(err.value), str(err.value)
    assert len(str(err.value).splitlines()) <= 6  # a few lines; the rest in .differences


def test_config_and_parameter_mismatches_are_refused(tmp_path):
    host, _, _ = _problem()
    params = _place(host, None)
    tx = adam_jax.adam(1e-2)
    adam_jax.save_checkpoint(
        tmp_path / "ckpt", params, tx.init(params), config={"learning_rate": 1e-2}
    )
    with pytest.raises(
        ValueError,
        match=r"config: checkpoint \{'learning_rate': 0.01\}, this run \{'learning_rate': 0.001\}",
    ):
        adam_jax.restore_checkpoint(tmp_path / "ckpt", tx, params, config={"learning_rate": 1e-3})
    wider = {"w": jnp.zeros((8, 5)), "b": params["b"]}
    with pytest.raises(
        ValueError,
        match=r"params leaf \['w'\]: checkpoint float32\[8, 4\], this run float32\[8, 5\]",
    ):
        adam_jax.restore_checkpoint(tmp_path / "ckpt", tx, wider)
    # Same optimizer, config not asked for: restores.
    r_params, _ = adam_jax.restore_checkpoint(tmp_path / "ckpt", tx, params)
    _assert_bitwise_equal(r_params, params)


def test_hyperparameters_are_stored_and_a_different_one_is_refused(tmp_path):
    """No config needed: the learning rate, b1, b2 and eps come from the optimizer's record."""
    host, x, y = _problem()
    params = _place(host, None)
    tx = adam_jax.adam(1e-2)
    step = _make_step(tx, x, y)
    params, state = step(params, tx.init(params))
    adam_jax.save_checkpoint(tmp_path / "ckpt", params, state)
    other = adam_jax.adam(1e-3, b1=0.8, b2=0.99, eps=1e-6)
    with pytest.raises(ValueError, match="does not fit the optimizer") as err:
        adam_jax.restore_checkpoint(tmp_path / "ckpt", other, params)
    for line in (
        "hyperparameter [0].learning_rate: checkpoint 0.01, this run 0.001",
        "hyperparameter [0].b1: checkpoint 0.9, this run 0.8",
        "hyperparameter [0].b2: checkpoint 0.999, this run 0.99",
        "hyperparameter [0].eps: checkpoint 1e-08, this run 1e-06",
    ):
        assert line in err.value.differences, err.value.differences
    # Only the learning rate allowed to change: the others are still refused.
    with pytest.raises(ValueError, match=r"b1: checkpoint 0\.9") as err:
        adam_jax.restore_checkpoint(
            tmp_path / "ckpt", other, params, allow_changes={"learning_rate"}
        )
    assert "learning_rate" not in str(err.value)
    # A schedule is stored by its values at SCHEDULE_STEPS: a schedule in place of 0.01 is refused.
    with pytest.raises(ValueError, match=r"learning_rate: checkpoint 0\.01, this run a schedule"):
        adam_jax.restore_checkpoint(
            tmp_path / "ckpt", adam_jax.adam(optax.constant_schedule(1e-2)), params
        )


def test_allow_changes_resumes_with_a_new_learning_rate(tmp_path):
    """Deliberately resuming with lr 1e-3: the continued run is the new optimizer's from the saved
    state, step for step (compared with a run that switches optimizer without a checkpoint)."""
    host, x, y = _problem()
    params = _place(host, None)
    old, new = adam_jax.adam(1e-2), adam_jax.adam(1e-3)
    params, state = _make_step(old, x, y)(params, old.init(params))
    adam_jax.save_checkpoint(tmp_path / "ckpt", params, state)
    r_params, r_state = adam_jax.restore_checkpoint(
        tmp_path / "ckpt", new, params, allow_changes={"learning_rate"}
    )
    assert adam_jax.hyperparams(r_state)["learning_rate"] == 1e-3
    step = _make_step(new, x, y)
    for _ in range(3):
        r_params, r_state = step(r_params, r_state)
        params, state = step(params, state)  # the saved state, moments and count as they were
    _assert_bitwise_equal(r_params, params)
    assert int(r_state[0].count) == 4
