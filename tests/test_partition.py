"""Optimizer state partitioned over the data axis (adam_jax.partitioned), on 8 virtual CPU devices.

The references are independent of the code under test: the same optimizer run unwrapped, with
its state replicated (the numbers must not change), and the bytes of that unwrapped state (each
device must hold 1/8 of them).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import adam_jax
from adam_jax import compat

STEPS = 3
# w and v split over 8 devices (along rows, along 8-bit blocks of 4); b splits as float32 but its
# 2 blocks of 4 cannot; odd and c split nowhere. The flat buffer of all of them: 208 = 8 * 26.
SHAPES = {"w": (16, 8), "v": (64,), "b": (8,), "odd": (3,), "c": (5,)}
SPLIT = {"w", "v", "b"}


def _mesh(n=8, axes=("data",), shape=None):
    return jax.make_mesh(
        shape or (n,), axes, axis_types=(AxisType.Auto,) * len(axes), devices=jax.devices()[:n]
    )


def _host_params():
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _grads(steps=STEPS, seed=1):
    rng = np.random.default_rng(seed)
    return [
        {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(steps)
    ]


def _place(tree, mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def _run(tx, params, grads):
    """``len(grads)`` steps from ``tx.init``, in one jitted scan: (params, state, updates)."""

    def step(carry, g):
        params, state = carry
        u, state = tx.update(g, state, params)
        return (optax.apply_updates(params, u), state), u

    @jax.jit
    def run(params, grads):
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *grads)
        (params, state), updates = jax.lax.scan(step, (params, tx.init(params)), stacked)
        return params, state, updates

    return run(params, grads)


def _ulps(a, b):
    """Largest difference between ``a`` and ``b``, in units of the last place of the leaf's
    largest element (a normwise measure: an element near 0 that is the small difference of
    large terms carries only their absolute error)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    largest = np.max(np.abs(b), initial=0.0)
    if largest == 0:
        return float(np.max(np.abs(a), initial=0.0) > 0) * np.inf
    return float(np.max(np.abs(a - b)) / np.spacing(np.float32(largest)))


def _max_ulps(x, y):
    pairs = zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True)
    return max((_ulps(a, b) for a, b in pairs if jnp.issubdtype(a.dtype, jnp.floating)), default=0)


def _assert_identical(x, y):
    assert jax.tree.structure(x) == jax.tree.structure(y)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(x), jax.tree.leaves(y), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), jax.tree_util.keystr(path))


MASK = {k: k in ("w", "v") for k in SHAPES}
FMA = 2  # see test_same_updates_as_unpartitioned

# name: (factory, largest difference from the unwrapped run, in ulps of a leaf's largest element).
# Plain Adam (with AMSGrad) is compared in the checkpoint and FSDP tests; one compat preset stands
# for all (they are chains of the same transformations). Each case compiles two programs.
COMPOSITIONS = {
    "adamw": (lambda: adam_jax.adamw(1e-2, weight_decay=0.1), FMA),
    "adamax": (lambda: adam_jax.adamax(1e-2), FMA),
    "torch_adam-l2-amsgrad": (lambda: compat.torch_adam(1e-2, weight_decay=0.1, amsgrad=True), FMA),
    "quantized": (
        lambda: adam_jax.quantized_moments(adam_jax.adam(1e-2), block_size=4, min_size=0),
        FMA,
    ),
    # w and v in buffers of their own, b, odd and c in one group buffer of 16 = 8 * 2
    "flat": (lambda: adam_jax.flat_moments(adam_jax.adam(1e-2), max_leaf_size=16), FMA),
    # A norm over the whole tree sums per device, then across devices: the clipping factor may
    # round differently, and with it every element.
    "clip-inject": (
        lambda: optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-2),
        ),
        4,
    ),
    "multisteps-masked": (
        lambda: optax.MultiSteps(optax.masked(adam_jax.adam(1e-2), MASK), every_k_schedule=2),
        FMA,
    ),
    # its statistics are sums over the tree too
    "monitor": (lambda: adam_jax.monitor(adam_jax.adam(1e-2), every=1), 4),
}


@pytest.fixture(scope="module")
def mesh():
    return _mesh()


@pytest.fixture(scope="module")
def params(mesh):
    return _place(_host_params(), mesh)


@pytest.mark.parametrize("name", COMPOSITIONS)
def test_same_updates_as_unpartitioned(name, mesh, params):
    make, ulps = COMPOSITIONS[name]
    grads = _place(_grads(), mesh)
    want = _run(make(), params, grads)
    got = _run(adam_jax.partitioned(make(), params), params, grads)
    # Not always bit for bit: XLA contracts m*b + c into one fused multiply-add (one rounding
    # instead of two) inside some fused kernels and not others, and the two programs fuse
    # differently (the same happens between two unpartitioned programs of different shapes).
    measured = _max_ulps(got, want)
    print(f"ULPS {name}: {measured}")
    assert measured <= ulps, f"{name}: {measured} ulps from the unpartitioned run"
    # the state is laid out as partition_sharding says: split leaves hold 1/8 on each device
    expected = adam_jax.partition_sharding(make(), params)
    for (path, leaf), sharding in zip(
        jax.tree_util.tree_leaves_with_path(got[1]), jax.tree.leaves(expected), strict=True
    ):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), jax.tree_util.keystr(path)


def _per_device_bytes(tree):
    """Bytes of the arrays of ``tree`` held by device 0 (read from the addressable shards)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        (shard,) = [s for s in leaf.addressable_shards if s.device == jax.devices()[0]]
        total += shard.data.nbytes
    return total


def _moment_bytes(state, names):
    """(on device 0, in all) bytes of the moments of the parameters ``names``, found by path."""
    on_one = whole = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if any(f"['{k}']" in jax.tree_util.keystr(path) for k in names):
            on_one += _per_device_bytes(leaf)
            whole += leaf.nbytes
    return on_one, whole


@pytest.mark.parametrize("name", ["adamw", "quantized", "flat"])
def test_each_device_holds_an_eighth_of_the_split_state(name, mesh, params):
    make = COMPOSITIONS[name][0]
    replicated = jax.jit(make().init)(params)
    state = adam_jax.partitioned(make(), params).init(params)  # eager: one jitted call
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), state, replicated)
    total = sum(x.nbytes for x in jax.tree.leaves(replicated))
    assert _per_device_bytes(replicated) == total  # the unwrapped state: all of it everywhere
    if name == "flat":  # every buffer (w's, v's, and one of the rest: 16 elements) is split
        arrays = [x for x in jax.tree.leaves(replicated) if x.ndim]
        assert _per_device_bytes(state) == total - sum(x.nbytes for x in arrays) * 7 // 8
        return
    split = SPLIT - ({"b"} if name == "quantized" else set())
    on_one, whole = _moment_bytes(state, split)
    assert on_one * 8 == whole > 0
    kept, kept_whole = _moment_bytes(state, set(SHAPES) - split)
    assert kept == kept_whole > 0  # leaves that do not divide keep their whole state
    report = adam_jax.partition_report(make(), params)
    assert set(report.split) == {f"['{k}']" for k in split}
    assert {path for path, _ in report.whole} == {f"['{k}']" for k in set(SHAPES) - split}


@pytest.mark.parametrize("name", ["flat"])
def test_explicit_mesh(name):
    """On a mesh of Explicit axes the layout is part of each array's type: the wrapper reshards."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    make, ulps = COMPOSITIONS[name]
    params, grads = _place(_host_params(), mesh), _place(_grads(), mesh)
    want = _run(make(), params, grads)
    got = _run(adam_jax.partitioned(make(), params), params, grads)
    # (flat_moments gives each leaf split on an Explicit mesh a buffer of its own: its state
    # is grouped otherwise than the unwrapped one's, so only parameters and updates compare)
    assert _max_ulps((got[0], got[2]), (want[0], want[2])) <= ulps
    if name != "flat":
        assert _max_ulps(got[1], want[1]) <= ulps
    for k, p in got[0].items():
        assert p.sharding.is_equivalent_to(params[k].sharding, p.ndim), k
    split = [x for x in jax.tree.leaves(got[1]) if x.ndim and x.sharding.spec[0] == "data"]
    assert split and all(x.addressable_shards[0].data.shape[0] * 8 == x.shape[0] for x in split)


def test_fsdp_params_keep_their_axis_and_the_state_adds_data():
    mesh = _mesh(shape=(4, 2), axes=("data", "model"))
    host = _host_params()
    specs = {"w": P("model"), "v": P("model"), "b": P(), "odd": P(), "c": P()}
    params = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in host.items()}
    tx = adam_jax.partitioned(adam_jax.adam(1e-2), params)
    state = tx.init(params)
    assert state[0].mu["w"].sharding.spec == P(("model", "data"), None)
    assert state[0].mu["w"].addressable_shards[0].data.shape == (2, 8)
    assert state[0].mu["b"].sharding.spec == P("data")  # replicated over model, split over data
    assert state[0].mu["odd"].sharding.spec == P()  # 3 elements: kept whole
    grads = [{k: jax.device_put(g[k], params[k].sharding) for k in g} for g in _grads()]
    want = _run(adam_jax.adam(1e-2), params, grads)
    got = _run(tx, params, grads)
    _assert_identical(got, want)
    for k, p in got[0].items():  # the parameters stay as the user placed them
        assert p.sharding.is_equivalent_to(params[k].sharding, p.ndim), k


def _count(hlo: str, op: str) -> int:
    return len(re.findall(rf" {op}(-start)?\(", hlo))


def test_compiled_step_scatters_the_gradient_and_gathers_the_update(mesh, params):
    """In the compiled step (batch split over data): each split leaf's update is all-gathered,
    the gradient's reduction is a reduce-scatter or (XLA:CPU has no reduce-scatter pass) an
    all-reduce whose result is only sliced, and the step's inputs and outputs hold 1/8 of the
    split state."""
    x = jax.device_put(
        np.random.default_rng(3).normal(size=(16, 16)).astype(np.float32),
        NamedSharding(mesh, P("data")),
    )

    def loss(p, x):
        h = jnp.tanh(x @ p["w"] + p["b"])
        return jnp.sum(h) * jnp.sum(p["v"]) + jnp.sum(p["odd"]) * jnp.sum(p["c"])

    def compiled(tx):
        def step(p, s, x):
            u, s = tx.update(jax.grad(loss)(p, x), s, p)
            return optax.apply_updates(p, u), s

        state = jax.eval_shape(tx.init, params)
        return jax.jit(step, donate_argnums=1).lower(params, state, x).compile()

    plain = compiled(adam_jax.adam(1e-2))
    ours = compiled(adam_jax.partitioned(adam_jax.adam(1e-2), params))
    hlo = ours.as_text()
    assert _count(hlo, "all-gather") >= 1
    # the gradient's reduction: as many collectives as without the wrapper (on XLA:CPU the same
    # all-reduces, each then sliced locally; where XLA has the pass, reduce-scatters)
    reductions = _count(hlo, "reduce-scatter") + _count(hlo, "all-reduce")
    assert reductions == _count(plain.as_text(), "all-reduce") >= 1
    assert _count(plain.as_text(), "all-gather") == 0
    # no full-size state crosses the step's boundary: 7/8 of the split moments are gone
    split_bytes = 2 * 4 * sum(np.prod(SHAPES[k]) for k in SPLIT)
    saved = (
        plain.memory_analysis().argument_size_in_bytes
        - ours.memory_analysis().argument_size_in_bytes
    )
    assert saved == split_bytes * 7 // 8
    saved = (
        plain.memory_analysis().output_size_in_bytes - ours.memory_analysis().output_size_in_bytes
    )
    assert saved == split_bytes * 7 // 8


def test_checkpoint_resumes_bit_for_bit_on_8_4_1_devices_and_unpartitioned(tmp_path):
    """Saved split over 8 devices; restored split over 8, 4 and 1 devices and unsplit over 8. On
    each, the restored arrays are the saved ones and the next steps are those of the state that
    was never saved (moved there in memory), bit for bit; and all of them stay within FMA ulps of
    one device that ran every step."""
    host, grads = _host_params(), _grads(steps=4, seed=7)
    tx = adam_jax.adam(1e-2, amsgrad=True)
    reference = _run(tx, _place(host, _mesh(1)), _place(grads, _mesh(1)))

    mesh8 = _mesh(8)
    params8 = _place(host, mesh8)
    saved = _run(adam_jax.partitioned(tx, params8), params8, _place(grads[:2], mesh8))[:2]
    adam_jax.save_checkpoint(tmp_path / "ckpt", *saved)

    for name, mesh in {"8": mesh8, "4": _mesh(4), "1": _mesh(1), "8-whole": mesh8}.items():
        target = _place(host, mesh)
        wrapped = tx if name == "8-whole" else adam_jax.partitioned(tx, target)
        layout = (
            adam_jax.state_sharding(tx, target)
            if wrapped is tx
            else adam_jax.partition_sharding(tx, target)
        )
        restored = adam_jax.restore_checkpoint(
            tmp_path / "ckpt", wrapped, target, state_shardings=layout
        )
        for leaf, sharding in zip(
            jax.tree.leaves(restored[1]), jax.tree.leaves(layout), strict=True
        ):  # read straight into the shards
            assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
        _assert_identical(restored, saved)
        if wrapped is not tx:
            n = mesh.shape["data"]
            assert restored[1][0].mu["w"].addressable_shards[0].data.shape == (16 // n, 8)

        @jax.jit
        def resume(params, state, grads, wrapped=wrapped):
            for g in grads:
                u, state = wrapped.update(g, state, params)
                params = optax.apply_updates(params, u)
            return params, state

        rest = _place(grads[2:], mesh)
        got = resume(*restored, rest)
        moved = jax.device_put(saved, (jax.tree.map(lambda x: x.sharding, target), layout))
        _assert_identical(got, resume(*moved, rest))
        assert _max_ulps(got, reference[:2]) <= FMA, name
    with pytest.raises(ValueError, match="state_shardings must be a tree of"):
        adam_jax.restore_checkpoint(tmp_path / "ckpt", tx, target, state_shardings={"mu": None})


def test_bad_arguments_say_what_is_allowed(mesh, params):
    tx = adam_jax.adam(1e-2)
    with pytest.raises(ValueError, match=r"axis='batch' is not an axis .* \('data',\)"):
        adam_jax.partitioned(tx, params, axis="batch")
    with pytest.raises(TypeError, match="axis must be a mesh axis name"):
        adam_jax.partitioned(tx, params, axis=0)
    with pytest.raises(ValueError, match="NamedSharding on one mesh"):
        adam_jax.partitioned(tx, jax.device_put(_host_params(), jax.devices()[0]))
    with pytest.raises(ValueError, match="has no sharding"):
        adam_jax.partitioned(tx, _host_params())
    with pytest.raises(TypeError, match=r"must be an optax\.GradientTransformation"):
        adam_jax.partitioned(adam_jax.adam, params)
    wrapped = adam_jax.partitioned(tx, params)
    with pytest.raises(ValueError, match="structure of the parameters"):
        wrapped.init({"w": params["w"]})


def test_two_processes_train_a_partitioned_state_like_one_process(tmp_path):
    """Two processes on 127.0.0.1 (gloo, 2 CPU devices each): the state split over all 4 devices
    trains the parameters of one process running unwrapped Adam on one device (to float32
    rounding: the gradient is summed across processes in another order)."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from tests import multiprocess_worker as mlp
    from tests import partition_worker
    from tests.xla_env import xla_flags

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, XLA_FLAGS=xla_flags(2))
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    out = tmp_path / "final.npz"
    procs = [
        subprocess.Popen(
            [sys.executable, partition_worker.__file__, str(port), str(i), "2", str(out)],
            env=env,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=150)[0].decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], "\n".join(
        f"--- worker {i}\n{log[-3000:]}" for i, log in enumerate(logs)
    )

    params, xs, ys = mlp.problem()
    initial = dict(params)
    tx = partition_worker.make_tx()
    step = jax.jit(mlp.make_step(tx))
    state = tx.init(params)
    for x, y in zip(xs, ys, strict=True):
        params, state = step(params, state, x, y)
    got = dict(np.load(out))
    assert set(got) == set(params)
    for k, v in params.items():
        np.testing.assert_allclose(got[k], np.asarray(v), rtol=1e-5, atol=1e-6, err_msg=k)
        assert not np.allclose(got[k], initial[k]), f"{k} did not move"


def test_the_guide_example_runs_and_prints_what_it_says(capsys):
    """The complete example of docs/guides/partitioned-state.md, run in this process (8 devices):
    each ``print(...)  # expected`` line prints what its comment says."""
    from pathlib import Path

    page = Path(__file__).resolve().parent.parent / "docs" / "guides" / "partitioned-state.md"
    section = page.read_text().split("## A complete data-parallel example", 1)[1]
    code = re.search(r"^```python\n(.*?)^```", section, re.M | re.S)[1]
    expected = re.findall(r"^print\(.*\)  # (.*)$", code, re.M)
    exec(compile(code, str(page), "exec"), {"__name__": "guide"})
    assert capsys.readouterr().out.splitlines() == expected


def test_bench_counts_bytes_and_collectives_of_both_contenders():
    """``adam-jax bench --partition``'s measurements, on a small tree: device 0 holds 1/8 of the
    partitioned state and all of the replicated one; only the partitioned step all-gathers."""
    from adam_jax.tools import bench_partition

    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(16, 16)).astype(np.float32), "b": np.zeros(16, np.float32)}
    rows = bench_partition.bench_case(
        "tiny",
        params,
        lambda p, x: jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2),
        rng.normal(size=(16, 16)).astype(np.float32),
        rounds=1,
        inner=1,
        contenders=("replicated", "partitioned"),
    )
    by = {r.contender: r for r in rows}
    adam_state = 2 * (16 * 16 + 16) * 4  # m and v, float32
    assert by["replicated"].state_bytes_device0 - by["partitioned"].state_bytes_device0 == (
        adam_state * 7 // 8
    )
    assert by["replicated"].collectives["all-gather"] == 0
    assert by["partitioned"].collectives["all-gather"] >= 1
    assert "| tiny | partitioned |" in bench_partition.format_table(rows)
    from adam_jax.tools import cli

    args = cli.build_parser().parse_args(["bench", "--partition", "--rounds", "2"])
    assert args.partition and bench_partition.argv_of(args) == ["--rounds", "2"]
