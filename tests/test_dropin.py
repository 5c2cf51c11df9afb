"""adam_jax states behave like optax's in the stacks users run: hyperparameter values are leaves,
not tree structure (no retrace when the optimizer is rebuilt), and every serializer users save
with (flax.serialization, a linen TrainState, equinox, orbax, pickle) round-trips every state.

Each round trip is checked by continuing training from the restored state: the parameters must
equal, bit for bit, those of a run that never stopped.
"""

from __future__ import annotations

import functools
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import compat
from tests.helpers import train

PARAMS = {"w": np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6), "b": np.zeros(6, np.float32)}
SCHEDULE = optax.exponential_decay(1e-2, 3, 0.5)

STATES = {
    "adam": lambda lr: adam_jax.adam(lr),
    "adamw": lambda lr: adam_jax.adamw(lr, weight_decay=1e-2),
    "adamax": lambda lr: adam_jax.adamax(lr),
    "amsgrad": lambda lr: adam_jax.adam(lr, amsgrad=True),
    "chain": lambda lr: optax.chain(optax.clip_by_global_norm(1.0), adam_jax.adam(lr)),
    "monitor": lambda lr: adam_jax.monitor(adam_jax.adam(lr)),
    "multisteps": lambda lr: optax.MultiSteps(adam_jax.adam(lr), every_k_schedule=2),
    "8-bit": lambda lr: adam_jax.quantized_moments(adam_jax.adam(lr), min_size=0),
    "flat": lambda lr: adam_jax.flat_moments(adam_jax.adam(lr)),
    "inject": lambda lr: optax.inject_hyperparams(adam_jax.adam)(learning_rate=lr),
    "torch_adam": lambda lr: compat.torch_adam(lr, weight_decay=1e-2, maximize=True),
    "keras_adamax": lambda lr: compat.keras_adamax(lr, weight_decay=1e-2),
}


def _grads(t):
    return jax.tree.map(
        lambda p: jnp.asarray(np.sin(np.arange(p.size) * 0.7 + t), p.dtype).reshape(p.shape), PARAMS
    )


def _train(tx, params, state, ts):
    return train(tx, params, state, (_grads(t) for t in ts))


@functools.lru_cache
def _built(name):
    """One optimizer per name, so its jitted step compiles once for all serializers."""
    return STATES[name](1e-2)


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", sorted(STATES))
def test_states_of_different_learning_rates_share_a_structure(name):
    make = STATES[name]
    a, b = make(1e-3).init(PARAMS), make(1e-4).init(PARAMS)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    diff = jax.tree.map(
        lambda x, y: jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32), a, b
    )
    assert any(float(jnp.max(jnp.abs(d))) > 0 for d in jax.tree.leaves(diff))  # the rate differs


def test_schedules_share_a_structure_and_values_are_leaves():
    a = adam_jax.adam(optax.constant_schedule(1e-3)).init(PARAMS)
    b = adam_jax.adam(SCHEDULE).init(PARAMS)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    record = a[0].hyperparams
    assert all(isinstance(v, jax.Array) for v in record.values())
    assert float(record["learning_rate"]) == np.float32(1e-3)
    assert record["learning_rate_schedule"].shape == (len(adam_jax._hyperparams.SCHEDULE_STEPS),)


def test_rebuilding_the_optimizer_does_not_retrace():
    """A jitted step that builds the optimizer from a traced learning rate compiles once, and a
    jitted function of the state sees the same structure whatever the rate."""
    traces = []

    @jax.jit
    def step(params, state, grads, lr):
        traces.append(1)
        updates, state = adam_jax.adam(lr).update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params, state = PARAMS, adam_jax.adam(1e-2).init(PARAMS)
    for t, lr in enumerate([1e-2, 5e-3, 1e-3]):
        params, state = step(params, state, _grads(t), lr)
        assert adam_jax.hyperparams(state)["learning_rate"] == pytest.approx(lr, rel=1e-6)
    assert len(traces) == 1

    seen = []
    norm = jax.jit(lambda s: seen.append(1) or optax.tree_utils.tree_norm(s[0].mu))
    for lr in (1e-3, 1e-4, 3e-2):
        norm(adam_jax.adam(lr).init(PARAMS))
    assert len(seen) == 1


def test_the_record_follows_the_optimizer_in_use():
    """After a step of a rebuilt optimizer, hyperparams() reports the rebuilt one's values, and
    a schedule's rate is the one of the latest step."""
    _, state = _train(adam_jax.adam(1e-2, b1=0.8), PARAMS, adam_jax.adam(1e-2).init(PARAMS), [0])
    assert adam_jax.hyperparams(state)["b1"] == pytest.approx(0.8)
    tx = adam_jax.adam(SCHEDULE)
    _, state = _train(tx, PARAMS, tx.init(PARAMS), range(4))
    assert adam_jax.hyperparams(state)["learning_rate"] == pytest.approx(
        float(SCHEDULE(3)), rel=1e-6
    )


# ---- serializers ---------------------------------------------------------------------------


def _flax_roundtrip(state):
    from flax import serialization

    return serialization.from_bytes(state, serialization.to_bytes(state))


def _pickle_roundtrip(state):
    return pickle.loads(pickle.dumps(jax.device_get(state)))


def _equinox_roundtrip(state, tmp_path):
    import equinox as eqx

    path = tmp_path / "state.eqx"
    eqx.tree_serialise_leaves(path, state)
    like = jax.tree.map(jnp.zeros_like, state)
    return eqx.tree_deserialise_leaves(path, like)


def _orbax_roundtrip(state, tmp_path):
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "orbax", state)
        checkpointer.wait_until_finished()
        return checkpointer.restore(tmp_path / "orbax", jax.eval_shape(lambda: state))


SERIALIZERS = ["flax", "pickle", "equinox", "orbax"]


@pytest.mark.parametrize("serializer", SERIALIZERS)
@pytest.mark.parametrize("name", sorted(STATES))
def test_every_state_round_trips_every_serializer(name, serializer, tmp_path):
    tx = _built(name)
    params, state = _train(tx, PARAMS, tx.init(PARAMS), range(3))
    restored = {
        "flax": lambda: _flax_roundtrip(state),
        "pickle": lambda: _pickle_roundtrip(state),
        "equinox": lambda: _equinox_roundtrip(state, tmp_path),
        "orbax": lambda: _orbax_roundtrip(state, tmp_path),
    }[serializer]()
    _assert_same(restored, state)
    ours = _train(tx, params, restored, range(3, 5))
    never_stopped = _train(tx, PARAMS, tx.init(PARAMS), range(5))
    _assert_same(ours, never_stopped)


def test_linen_train_state_round_trips_flax_serialization():
    from flax import linen as nn
    from flax import serialization
    from flax.training import train_state

    model = nn.Dense(3)
    variables = model.init(jax.random.key(0), jnp.ones((1, 5)))
    x = jnp.linspace(-1, 1, 10).reshape(2, 5)

    def loss(params):
        return jnp.sum(model.apply({"params": params}, x) ** 2)

    for tx in (adam_jax.adam(1e-2), adam_jax.monitor(adam_jax.adamw(SCHEDULE))):
        ts = train_state.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)
        ts = ts.apply_gradients(grads=jax.grad(loss)(ts.params))
        data = serialization.to_bytes(ts)
        fresh = train_state.TrainState.create(
            apply_fn=model.apply, params=variables["params"], tx=tx
        )
        back = serialization.from_bytes(fresh, data)
        _assert_same(back.opt_state, ts.opt_state)
        _assert_same(back.params, ts.params)
        nxt = back.apply_gradients(grads=jax.grad(loss)(back.params))
        ref = ts.apply_gradients(grads=jax.grad(loss)(ts.params))
        _assert_same(nxt.params, ref.params)
