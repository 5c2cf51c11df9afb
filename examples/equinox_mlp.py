"""Equinox: an ``eqx.nn.MLP`` trained with adam_jax, checkpointed with adam_jax's
``save_checkpoint``, restored into a fresh model and continued bit for bit.

The optimizer sees the array part of the model, ``eqx.filter(model, eqx.is_array)``; a restore
fills that part and ``eqx.combine`` puts the static part back. Run:
``python examples/equinox_mlp.py``.
"""

import tempfile

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import adam_jax

rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(256, 4)), jnp.float32)
y = jnp.sin(x.sum(axis=1, keepdims=True))
tx = adam_jax.adam(1e-2)


def loss_fn(model):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


@eqx.filter_jit
def train_step(model, opt_state):
    grads = eqx.filter_grad(loss_fn)(model)
    updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state


model = eqx.nn.MLP(4, 1, width_size=32, depth=1, key=jax.random.key(0))
opt_state = tx.init(eqx.filter(model, eqx.is_array))
first = float(loss_fn(model))
for _ in range(100):
    model, opt_state = train_step(model, opt_state)

with tempfile.TemporaryDirectory() as folder:
    adam_jax.save_checkpoint(f"{folder}/100", eqx.filter(model, eqx.is_array), opt_state)
    fresh = eqx.nn.MLP(4, 1, width_size=32, depth=1, key=jax.random.key(1))
    arrays, static = eqx.partition(fresh, eqx.is_array)
    arrays, r_opt_state = adam_jax.restore_checkpoint(f"{folder}/100", tx, arrays)
    restored = eqx.combine(arrays, static)

for _ in range(100):  # both continue: the restored run must be the same run
    model, opt_state = train_step(model, opt_state)
    restored, r_opt_state = train_step(restored, r_opt_state)
same = all(
    bool(jnp.array_equal(a, b))
    for a, b in zip(
        jax.tree.leaves((eqx.filter(model, eqx.is_array), opt_state)),
        jax.tree.leaves((eqx.filter(restored, eqx.is_array), r_opt_state)),
        strict=True,
    )
)
print(f"step {int(r_opt_state[0].count)}: loss {first:.4f} -> {float(loss_fn(restored)):.4f}")
print(f"restored run equals the uninterrupted one: {same}")
