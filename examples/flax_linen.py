"""Flax linen: a ``TrainState`` with an adam_jax optimizer, saved and restored with
``flax.serialization``, and training continued from the restored state bit for bit.

Run: ``python examples/flax_linen.py``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from flax.training import train_state

import adam_jax


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.relu(nn.Dense(32)(x)))


rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(256, 4)), jnp.float32)
y = jnp.sin(x.sum(axis=1, keepdims=True))
model = MLP()


def create(seed):
    params = model.init(jax.random.key(seed), x)
    return train_state.TrainState.create(
        apply_fn=model.apply, params=params, tx=adam_jax.adam(1e-2)
    )


def loss_fn(params):
    return jnp.mean((model.apply(params, x) - y) ** 2)


@jax.jit
def train_step(state):
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


state = create(0)
first = float(loss_fn(state.params))
for _ in range(100):
    state, _ = train_step(state)

blob = serialization.to_bytes(state)  # parameters, optimizer state and step, as bytes
restored = serialization.from_bytes(create(1), blob)  # into a freshly initialised TrainState

for _ in range(100):  # both continue: the restored run must be the same run
    state, _ = train_step(state)
    restored, _ = train_step(restored)
same = all(
    bool(jnp.array_equal(a, b))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True)
)
print(f"step {int(restored.step)}: loss {first:.4f} -> {float(loss_fn(restored.params)):.4f}")
print(f"restored run equals the uninterrupted one: {same}")
