"""One process of a multi-process, data-parallel adam_jax run (started by test_multiprocess.py).

``python tests/multiprocess_worker.py PORT PROCESS_ID NUM_PROCESSES OUT.npz``: joins the
``jax.distributed`` cluster on 127.0.0.1:PORT with CPU gloo collectives, trains a small MLP on a
mesh over every process's devices (batch split over ``data``, the first layer's weight too), checks
that the optimizer state is sharded like the parameters, saves and restores a checkpoint written
by both processes, and process 0 writes the final parameters.
It does this for float32 Adam (AMSGrad) and for 8-bit state. The problem (``problem``,
``make_tx``, ``make_tx_8bit``, ``make_step``) is shared with the single-process reference.
"""

from __future__ import annotations

import os
import sys

import numpy as np

STEPS, GLOBAL_BATCH, D_IN, HIDDEN = 6, 16, 4, 8


def problem() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Initial parameters and the global batches (xs, ys) of every step, from a fixed seed."""
    rng = np.random.default_rng(42)
    params = {
        "w1": (rng.normal(size=(D_IN, HIDDEN)) / np.sqrt(D_IN)).astype(np.float32),
        "b1": np.zeros((HIDDEN,), np.float32),
        "w2": (rng.normal(size=(HIDDEN, 1)) / np.sqrt(HIDDEN)).astype(np.float32),
    }
    xs = rng.normal(size=(STEPS, GLOBAL_BATCH, D_IN)).astype(np.float32)
    ys = np.sin(xs.sum(-1, keepdims=True)).astype(np.float32)
    return params, xs, ys


def make_tx():
    import adam_jax

    return adam_jax.adam(1e-2, amsgrad=True)


def make_tx_8bit():
    import adam_jax

    return adam_jax.quantized_moments(adam_jax.adam(1e-2), min_size=0)


def make_step(tx):
    """One training step: mean squared error over the (global) batch, Adam update."""
    import jax
    import jax.numpy as jnp
    import optax

    def loss(params, x, y):
        h = jnp.tanh(x @ params["w1"] + params["b1"])
        return jnp.mean((h @ params["w2"] - y) ** 2)

    def step(params, state, x, y):
        updates, state = tx.update(jax.grad(loss)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    return step


def join_cluster(port: int, process_id: int, num_processes: int) -> None:
    """Join the ``jax.distributed`` cluster on 127.0.0.1:PORT, with CPU gloo collectives."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
        heartbeat_timeout_seconds=20,
        shutdown_timeout_seconds=20,
    )


def main(port: int, process_id: int, num_processes: int, out: str) -> None:
    import jax

    join_cluster(port, process_id, num_processes)
    from jax.experimental import multihost_utils
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    assert jax.process_count() == num_processes and jax.local_device_count() == 2
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    specs = {"w1": P(None, "data"), "b1": P(), "w2": P()}

    batch = NamedSharding(mesh, P("data"))
    rows = GLOBAL_BATCH // num_processes  # this process's share of every global batch
    local = slice(process_id * rows, (process_id + 1) * rows)

    host_params, xs, ys = problem()
    finals = {}
    for name, tx in (("", make_tx()), ("q8_", make_tx_8bit())):
        params = {
            k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in host_params.items()
        }
        params = _train_check_and_checkpoint(
            tx,
            params,
            mesh,
            batch,
            local,
            xs,
            ys,
            os.path.join(os.path.dirname(out), f"{name}ckpt"),
        )
        gathered = multihost_utils.process_allgather(params, tiled=True)
        finals.update({name + k: v for k, v in gathered.items()})
    if process_id == 0:
        np.savez(out, **{k: np.asarray(v) for k, v in finals.items()})
    jax.distributed.shutdown()


def _train_check_and_checkpoint(tx, params, mesh, batch, local, xs, ys, ckpt):
    """Train on this process's share of every batch; check the state's sharding; save and restore
    a checkpoint written by every process; return the parameters."""
    import jax

    import adam_jax

    state = jax.jit(tx.init)(params)
    expected = adam_jax.state_sharding(tx, params)
    for (path, leaf), sharding in zip(
        jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(expected), strict=True
    ):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (path, leaf.sharding)
    step = jax.jit(make_step(tx))
    for x, y in zip(xs, ys, strict=True):
        x = jax.make_array_from_process_local_data(batch, x[local])
        y = jax.make_array_from_process_local_data(batch, y[local])
        params, state = step(params, state, x, y)

    for (path, leaf), sharding in zip(
        jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(expected), strict=True
    ):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (path, leaf.sharding)
    # the first layer's moments are split over every device of every process
    first = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(state)
        if "'w1'" in jax.tree_util.keystr(path) and leaf.shape == (D_IN, HIDDEN)
    ]
    assert first, "no moment of w1 in the state"
    for leaf in first:
        assert leaf.addressable_shards[0].data.shape == (D_IN, HIDDEN // jax.device_count())

    # Every process writes its shards of one checkpoint and reads them back onto the mesh.
    adam_jax.save_checkpoint(ckpt, params, state, config={"lr": 1e-2})
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), params
    )
    r_params, r_state = adam_jax.restore_checkpoint(ckpt, tx, target, config={"lr": 1e-2})
    for a, b in zip(
        jax.tree.leaves((params, state)), jax.tree.leaves((r_params, r_state)), strict=True
    ):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)
        for sa, sb in zip(a.addressable_shards, b.addressable_shards, strict=True):
            assert sa.index == sb.index and np.array_equal(np.asarray(sa.data), np.asarray(sb.data))
    return params


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
