"""One process of a 2-process data-parallel run with the optimizer state split over every device
(``adam_jax.partitioned``), started by ``test_partition.py::test_two_processes``.

``python tests/partition_worker.py PORT PROCESS_ID NUM_PROCESSES OUT.npz``: joins the
``jax.distributed`` cluster on 127.0.0.1:PORT with CPU gloo collectives, trains the MLP of
``multiprocess_worker.problem`` with replicated parameters and the batch split over ``data``,
checks that each device holds 1/n of every moment, saves and restores a checkpoint written by
both processes, and process 0 writes the final parameters.
"""

from __future__ import annotations

import os
import sys


def make_tx():
    import adam_jax

    return adam_jax.adam(1e-2, amsgrad=True)


def main(port: int, process_id: int, num_processes: int, out: str) -> None:
    import jax

    from tests import multiprocess_worker as mlp

    mlp.join_cluster(port, process_id, num_processes)
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import adam_jax

    n = jax.device_count()
    mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,))
    host_params, xs, ys = mlp.problem()
    params = jax.device_put(host_params, NamedSharding(mesh, P()))
    tx = adam_jax.partitioned(make_tx(), params)
    state = jax.jit(tx.init)(params)
    step = jax.jit(mlp.make_step(tx))
    batch = NamedSharding(mesh, P("data"))
    rows = mlp.GLOBAL_BATCH // num_processes
    local = slice(process_id * rows, (process_id + 1) * rows)
    for x, y in zip(xs, ys, strict=True):
        x = jax.make_array_from_process_local_data(batch, x[local])
        y = jax.make_array_from_process_local_data(batch, y[local])
        params, state = step(params, state, x, y)

    # every moment is split over all devices of both processes: w1 (4, 8) holds 1 row each
    moments = state[0]
    for tree in (moments.mu, moments.nu, moments.nu_max):
        for k, leaf in tree.items():
            shard = leaf.addressable_shards[0].data.shape
            assert shard == (leaf.shape[0] // n, *leaf.shape[1:]), (k, shard, leaf.shape)

    ckpt = os.path.join(os.path.dirname(out), "ckpt")
    adam_jax.save_checkpoint(ckpt, params, state)
    r_params, r_state = adam_jax.restore_checkpoint(ckpt, tx, params)
    r_state = jax.device_put(r_state, adam_jax.partition_sharding(make_tx(), params))
    for a, b in zip(
        jax.tree.leaves((params, state)), jax.tree.leaves((r_params, r_state)), strict=True
    ):
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim), (a.sharding, b.sharding)
        for sa, sb in zip(a.addressable_shards, b.addressable_shards, strict=True):
            assert sa.index == sb.index and np.array_equal(np.asarray(sa.data), np.asarray(sb.data))

    gathered = multihost_utils.process_allgather(params, tiled=True)
    if process_id == 0:
        np.savez(out, **{k: np.asarray(v) for k, v in gathered.items()})
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
