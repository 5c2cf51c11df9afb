"""Data-parallel training on 8 devices: the batch sharded over a mesh, the parameters and the
optimizer state replicated, the gradient's all-reduce inserted by XLA.

On a machine without 8 accelerators, JAX is asked for 8 virtual CPU devices; that must happen
before JAX is imported, so it is the first thing this script does. Run:
``python examples/data_parallel.py``.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adam_jax

mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
batch_sharding = NamedSharding(mesh, P("data"))
replicated = NamedSharding(mesh, P())

true_w = np.linspace(-1.0, 1.0, 16).astype(np.float32)
params = jax.device_put({"w": jnp.zeros(16), "b": jnp.zeros(())}, replicated)
tx = adam_jax.adam(1e-2)
opt_state = jax.jit(tx.init, out_shardings=adam_jax.state_sharding(tx, params))(params)


def loss_fn(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


@jax.jit
def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)  # the mean over the global batch
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


rng = np.random.default_rng(0)
losses = []
for _ in range(300):
    x = rng.normal(size=(64, 16)).astype(np.float32)  # 8 examples per device
    y = x @ true_w + 0.5
    x, y = jax.device_put(x, batch_sharding), jax.device_put(y, batch_sharding)
    params, opt_state, loss = train_step(params, opt_state, x, y)
    losses.append(float(loss))

mu = opt_state[0].mu["w"]
print(
    f"{len(jax.devices())} devices, batch sharded as {x.sharding.spec}, moments {mu.sharding.spec}"
)
print(f"loss {losses[0]:.4f} -> {losses[-1]:.6f}")
