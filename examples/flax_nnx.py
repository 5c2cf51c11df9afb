"""Flax NNX: an MLP trained with ``nnx.Optimizer`` and adam_jax, checkpointed, and resumed.

``nnx.Optimizer`` keeps the optimizer state inside Flax variables; adam_jax's checkpoints take
plain arrays, so the state is saved as ``nnx.as_pure(optimizer.opt_state)`` and loaded back into a
fresh model and optimizer with ``adam_jax.load_into_nnx``. Run: ``python examples/flax_nnx.py``.
"""

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import adam_jax


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(4, 32, rngs=rngs)
        self.out = nnx.Linear(32, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(256, 4)), jnp.float32)
y = jnp.sin(x.sum(axis=1, keepdims=True))


def loss_fn(model):
    return jnp.mean((model(x) - y) ** 2)


@nnx.jit
def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


tx = adam_jax.adam(1e-2)
model = MLP(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
first = float(loss_fn(model))
for _ in range(200):
    train_step(model, optimizer)
last = float(loss_fn(model))

with tempfile.TemporaryDirectory() as folder:
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    adam_jax.save_checkpoint(f"{folder}/200", params, nnx.as_pure(optimizer.opt_state))

    # Resume into a fresh model and optimizer (another initialisation, as after a restart).
    restored = MLP(nnx.Rngs(1))
    restored_optimizer = nnx.Optimizer(restored, tx, wrt=nnx.Param)
    target = nnx.to_pure_dict(nnx.state(restored, nnx.Param))
    r_params, r_state = adam_jax.restore_checkpoint(f"{folder}/200", tx, target)
    adam_jax.load_into_nnx(restored, restored_optimizer, r_params, r_state)

same = all(
    bool(jnp.array_equal(a, b))
    for a, b in zip(
        jax.tree.leaves(nnx.state(model)) + jax.tree.leaves(nnx.state(optimizer)),
        jax.tree.leaves(nnx.state(restored)) + jax.tree.leaves(nnx.state(restored_optimizer)),
        strict=True,
    )
)
print(f"step {int(restored_optimizer.step.get_value())}: loss {first:.4f} -> {last:.4f}")
print(f"restored model and optimizer equal the saved ones: {same}")
