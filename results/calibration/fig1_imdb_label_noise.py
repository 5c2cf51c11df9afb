"""Calibration of the full Fig. 1 right corpus's label noise (criterion: results/RULES.md, 2026-12-02).

Run: python results/calibration/fig1_imdb_label_noise.py fig1_imdb (and fig1_imdb_nodrop); writes /work/calib/PANEL.json, copied here as fig1_imdb_label_noise_{dropout,nodrop}.json.
"""

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax.tools.paper import data, runner, train

NOISES = (0.2, 0.1, 0.05, 0.0)
LRS = (0.03, 0.1, 0.3)
EPOCHS, STEPS, SEED = 45, 196, 2000
panel = sys.argv[1]
dss = [data.zipf_corpus(num_docs=25_000, vocab=10_000, label_noise=p) for p in NOISES]
for d in dss[1:]:
    assert np.array_equal(d.x, dss[0].x)
x = jnp.asarray(dss[0].x)
ys = np.stack([d.y for d in dss for _ in LRS])
hp = jnp.asarray([lr for _ in NOISES for lr in LRS], jnp.float32)
model = runner.build_model(panel, dss[0], runner.FULL)
make_tx = runner.make_optimizer("adam", True)
n = len(dss[0].y)
k_init, k_eval, k_epochs = jax.random.split(jax.random.PRNGKey(SEED), 3)
params0 = model.init(k_init)
x_eval = x[:10_000].reshape(10, 1000, -1)
y_eval = jnp.asarray(ys[:, :10_000].reshape(len(ys), 10, 1000))
ys = jnp.asarray(ys)


def cost(p, ye):
    return jnp.mean(
        jax.lax.map(
            lambda a: model.loss(p, a[0].astype(jnp.float32), a[1], k_eval, False), (x_eval, ye)
        )
    )


def epoch_one(h, y, p, s, order, keys):
    tx = make_tx({"lr": h})

    def step(c, b):
        p, s = c
        idx, key = b
        g = jax.grad(model.loss)(p, x[idx].astype(jnp.float32), y[idx], key, True)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (p, s), _ = jax.lax.scan(step, (p, s), (order, keys))
    return p, s


epoch = jax.jit(jax.vmap(epoch_one, in_axes=(0, 0, 0, 0, None, None)))
costs = jax.jit(jax.vmap(cost))
init = jax.jit(jax.vmap(lambda h: make_tx({"lr": h}).init(params0)))
R = len(hp)
params = jax.tree.map(lambda a: jnp.broadcast_to(a, (R, *a.shape)), params0)
state = init(hp)
batches = train.Minibatches(k_epochs, n, EPOCHS * STEPS)
hist = [np.asarray(costs(params, y_eval))]
t0 = time.time()
for e in range(1, EPOCHS + 1):
    order, keys = batches.chunk((e - 1) * STEPS, STEPS)
    params, state = epoch(hp, ys, params, state, order, keys)
    if e in (1, 5, 10, 20, 30, 45):
        hist.append(np.asarray(costs(params, y_eval)))
        print(panel, "epoch", e, round(time.time() - t0), "s", flush=True)
out = {
    "panel": panel,
    "noises": NOISES,
    "lrs": LRS,
    "epochs_logged": [0, 1, 5, 10, 20, 30, 45],
    "costs": [h.reshape(len(NOISES), len(LRS)).tolist() for h in hist],
    "wall_s": time.time() - t0,
    "cpu_s": time.process_time(),
}
json.dump(out, open(f"/work/calib/{panel}.json", "w"), indent=1)
