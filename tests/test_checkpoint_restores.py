"""Restores that help: Flax NNX, linen and Equinox recipes, targets without shardings, a constant
learning rate turning into a schedule, inject_hyperparams added or removed, allow_changes checked,
and structure mismatches explained in a few lines.

Continuations are compared with optax (an independent implementation) started from the same
moments and counts, or with a run of the same optimizer that never stopped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from tests.helpers import train

PARAMS = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, np.float32)}


def _grads(t):
    return jax.tree.map(
        lambda p: jnp.asarray(np.cos(np.arange(p.size) + 0.3 * t), p.dtype).reshape(p.shape), PARAMS
    )


def _train(tx, params, state, ts):
    return train(tx, params, state, (_grads(t) for t in ts))


def _equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def saved(tmp_path):
    """adam(1e-2) trained 3 steps and saved; returns (path, params, state)."""
    tx = adam_jax.adam(1e-2)
    params, state = _train(tx, PARAMS, tx.init(PARAMS), range(3))
    adam_jax.save_checkpoint(tmp_path / "ckpt", params, state)
    return tmp_path / "ckpt", params, state


def test_a_target_without_shardings_restores_onto_the_default_device(saved):
    path, params, state = saved
    for target in (PARAMS, jax.eval_shape(lambda: PARAMS)):  # NumPy arrays; no sharding
        r_params, r_state = adam_jax.restore_checkpoint(path, adam_jax.adam(1e-2), target)
        _equal((r_params, r_state), (params, state))
        for leaf in jax.tree.leaves((r_params, r_state)):
            assert leaf.devices() == {jax.devices()[0]}


def test_a_constant_learning_rate_becomes_a_schedule(saved):
    """Resumed with a schedule, the schedule continues at the saved step (3), as optax does from
    the same moments and counts."""
    path, params, state = saved
    schedule = optax.exponential_decay(1e-2, 2, 0.5)
    tx = adam_jax.adam(schedule)
    with pytest.raises(ValueError, match=r"learning_rate: checkpoint 0\.01, this run a schedule"):
        adam_jax.restore_checkpoint(path, tx, PARAMS)
    r_params, r_state = adam_jax.restore_checkpoint(
        path, tx, PARAMS, allow_changes={"learning_rate"}
    )
    assert int(r_state[1].count) == 3  # the schedule's count is the Adam step count
    ours, _ = _train(tx, r_params, r_state, range(3, 6))

    reference = optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(schedule))
    ref_state = (
        optax.ScaleByAdamState(count=state[0].count, mu=state[0].mu, nu=state[0].nu),
        optax.ScaleByScheduleState(count=jnp.asarray(3, jnp.int32)),
    )
    theirs, _ = _train(reference, params, ref_state, range(3, 6))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ours, theirs)

    # And back: a schedule resumed as a constant drops the schedule's count.
    sched_path = path.parent / "sched"
    adam_jax.save_checkpoint(sched_path, r_params, r_state)
    _, back = adam_jax.restore_checkpoint(
        sched_path, adam_jax.adam(1e-3), PARAMS, allow_changes={"learning_rate"}
    )
    assert int(back[0].count) == 3 and adam_jax.hyperparams(back)["learning_rate"] == 1e-3


def test_inject_hyperparams_added_and_removed_carries_count_and_moments(saved, tmp_path):
    path, params, state = saved
    injected = optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-2)
    r_params, r_state = adam_jax.restore_checkpoint(path, injected, PARAMS)
    assert int(r_state.count) == 3 and int(r_state.inner_state[0].count) == 3
    _equal((r_state.inner_state[0].mu, r_state.inner_state[0].nu), (state[0].mu, state[0].nu))
    ours, ours_state = _train(injected, r_params, r_state, range(3, 5))
    never_stopped, _ = _train(adam_jax.adam(1e-2), params, state, range(3, 5))
    # an injected rate is a float32 array, a built-in one a Python float: 1 ulp apart
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    jax.tree.map(close, ours, never_stopped)

    # Removed again: the plain optimizer continues from the injected run's state.
    adam_jax.save_checkpoint(tmp_path / "injected", ours, ours_state)
    p2, s2 = adam_jax.restore_checkpoint(tmp_path / "injected", adam_jax.adam(1e-2), PARAMS)
    assert int(s2[0].count) == 5
    _equal(p2, ours)


def test_the_optimizer_given_wins_and_an_injected_difference_is_named(tmp_path):
    """Saved with an injected 1e-2, restored into inject_hyperparams(adam)(1e-3): refused unless
    allowed, and then the state holds the 1e-3 the user built."""
    old = optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-2)
    params, state = _train(old, PARAMS, old.init(PARAMS), range(2))
    adam_jax.save_checkpoint(tmp_path / "c", params, state)
    new = optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-3)
    with pytest.raises(ValueError, match=r"learning_rate: checkpoint 0\.01, this run 0\.001"):
        adam_jax.restore_checkpoint(tmp_path / "c", new, PARAMS)
    _, r_state = adam_jax.restore_checkpoint(
        tmp_path / "c", new, PARAMS, allow_changes={"learning_rate"}
    )
    assert float(r_state.hyperparams["learning_rate"]) == np.float32(1e-3)
    assert adam_jax.hyperparams(r_state)["learning_rate"] == pytest.approx(1e-3)


def test_allow_changes_names_are_checked(saved):
    path, _, _ = saved
    with pytest.raises(ValueError, match=r"'learning-rate'.*known names: .*learning_rate"):
        adam_jax.restore_checkpoint(
            path, adam_jax.adam(1e-2), PARAMS, allow_changes={"learning-rate"}
        )
    for nothing in (None, False, ()):
        adam_jax.restore_checkpoint(path, adam_jax.adam(1e-2), PARAMS, allow_changes=nothing)
    with pytest.raises(TypeError, match="allow_changes=3"):
        adam_jax.restore_checkpoint(path, adam_jax.adam(1e-2), PARAMS, allow_changes=3)


def test_a_structure_mismatch_is_explained_in_a_few_lines(saved):
    path, _, _ = saved
    tx = optax.chain(optax.clip_by_global_norm(1.0), adam_jax.adam(1e-2))
    with pytest.raises(adam_jax.CheckpointMismatchError) as err:
        adam_jax.restore_checkpoint(path, tx, PARAMS)
    message = str(err.value)
    assert "the optimizer has 3 transformations, the checkpoint 2" in message
    assert "this run's [0:1] EmptyState is not in the checkpoint" in message
    assert len(message.splitlines()) <= 6, message
    assert len(err.value.differences) > 6  # the full detail, on request
    assert any("opt_state leaf [1][0].mu['w']" in line for line in err.value.differences)

    with pytest.raises(adam_jax.CheckpointMismatchError) as err:  # a leaf changed dtype
        adam_jax.restore_checkpoint(path, adam_jax.adam(1e-2, nu_dtype=jnp.bfloat16), PARAMS)
    assert "opt_state leaf [0].nu['b']: checkpoint float32[4], this run bfloat16[4]" in str(
        err.value
    )


# ---- Flax NNX, linen, Equinox ---------------------------------------------------------------


def test_nnx_optimizer_recipe_saves_and_restores(tmp_path):
    from flax import nnx

    def make():
        model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        return model, nnx.Optimizer(model, adam_jax.adam(1e-2), wrt=nnx.Param)

    x = jnp.linspace(-1, 1, 12).reshape(4, 3)

    def loss(model):
        return jnp.sum(model(x) ** 2)

    model, optimizer = make()
    for _ in range(3):
        optimizer.update(model, nnx.grad(loss)(model))
    with pytest.raises(ValueError, match=r"(?s)Flax NNX variables.*load_into_nnx"):
        adam_jax.save_checkpoint(tmp_path / "x", nnx.state(model, nnx.Param), nnx.state(optimizer))

    # The recipe (docs/guides/frameworks.md, and the error above).
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    adam_jax.save_checkpoint(tmp_path / "c", params, nnx.as_pure(optimizer.opt_state))
    model2, optimizer2 = make()
    target = nnx.to_pure_dict(nnx.state(model2, nnx.Param))
    r_params, r_state = adam_jax.restore_checkpoint(tmp_path / "c", adam_jax.adam(1e-2), target)
    adam_jax.load_into_nnx(model2, optimizer2, r_params, r_state)
    assert int(optimizer2.step.get_value()) == 3
    for _ in range(2):
        optimizer.update(model, nnx.grad(loss)(model))
        optimizer2.update(model2, nnx.grad(loss)(model2))
    _equal(nnx.to_pure_dict(nnx.state(model2)), nnx.to_pure_dict(nnx.state(model)))


def test_linen_train_state_saves_and_restores(tmp_path):
    from flax import linen as nn
    from flax.training import train_state

    model = nn.Dense(2)
    x = jnp.linspace(-1, 1, 12).reshape(4, 3)
    variables = model.init(jax.random.key(0), x)
    tx = adam_jax.adamw(1e-2)

    def loss(params):
        return jnp.sum(model.apply({"params": params}, x) ** 2)

    ts = train_state.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)
    for _ in range(3):
        ts = ts.apply_gradients(grads=jax.grad(loss)(ts.params))
    adam_jax.save_checkpoint(tmp_path / "c", ts.params, ts.opt_state, config={"step": int(ts.step)})
    fresh = train_state.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)
    params, opt_state = adam_jax.restore_checkpoint(tmp_path / "c", tx, fresh.params)
    back = fresh.replace(params=params, opt_state=opt_state, step=3)
    for _ in range(2):
        ts = ts.apply_gradients(grads=jax.grad(loss)(ts.params))
        back = back.apply_gradients(grads=jax.grad(loss)(back.params))
    _equal(back.params, ts.params)


def test_equinox_model_saves_and_restores(tmp_path):
    import equinox as eqx

    model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
    tx = adam_jax.adam(1e-2)
    x = jnp.linspace(-1, 1, 3)

    @eqx.filter_jit
    def step(model, state):
        grads = eqx.filter_grad(lambda m: jnp.sum(m(x) ** 2))(model)
        updates, state = tx.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state

    state = tx.init(eqx.filter(model, eqx.is_array))
    for _ in range(3):
        model, state = step(model, state)
    adam_jax.save_checkpoint(tmp_path / "c", eqx.filter(model, eqx.is_array), state)
    fresh = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(1))
    arrays, static = eqx.partition(fresh, eqx.is_array)
    r_arrays, r_state = adam_jax.restore_checkpoint(tmp_path / "c", tx, arrays)
    back = eqx.combine(r_arrays, static)
    for _ in range(2):
        model, state = step(model, state)
        back, r_state = step(back, r_state)
    _equal(eqx.filter(back, eqx.is_array), eqx.filter(model, eqx.is_array))


def test_learning_rates_are_compared_however_they_are_given(tmp_path):
    """A jnp scalar is compared by value, and a schedule by its values at SCHEDULE_STEPS (which
    include a step in 500-599): one that differs only there is caught."""
    tx = adam_jax.adam(jnp.float32(1e-2))
    adam_jax.save_checkpoint(tmp_path / "jnp", PARAMS, tx.init(PARAMS))
    with pytest.raises(ValueError, match=r"learning_rate: checkpoint 0\.01, this run 0\.001"):
        adam_jax.restore_checkpoint(tmp_path / "jnp", adam_jax.adam(jnp.float32(1e-3)), PARAMS)
    adam_jax.restore_checkpoint(tmp_path / "jnp", adam_jax.adam(1e-2), PARAMS)  # same value

    base = optax.constant_schedule(1e-2)
    bumped = optax.piecewise_constant_schedule(1e-2, {500: 0.5, 600: 2.0})  # 5e-3 on 500-599
    assert float(bumped(550)) == pytest.approx(5e-3) and float(bumped(700)) == pytest.approx(1e-2)
    adam_jax.save_checkpoint(tmp_path / "sched", PARAMS, adam_jax.adam(base).init(PARAMS))
    with pytest.raises(ValueError, match=r"learning_rate: checkpoint a schedule, this run a sche"):
        adam_jax.restore_checkpoint(tmp_path / "sched", adam_jax.adam(bumped), PARAMS)
    adam_jax.restore_checkpoint(
        tmp_path / "sched", adam_jax.adam(optax.constant_schedule(1e-2)), PARAMS
    )
