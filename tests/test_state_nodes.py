"""The state_nodes protocol: a wrapper written outside the package, whose moments are a node of two
arrays, is placed, split, monitored and checkpointed by the package's tools through the protocol
alone; and those tools learn about flat_moments and quantized_moments only through it."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from test_layout import GRAPH

import adam_jax
from adam_jax import state_nodes


@functools.partial(jax.tree_util.register_dataclass, data_fields=["hi", "lo"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Split(state_nodes.ParamNode):
    """A moment kept as a bfloat16 value plus its float32 remainder (a third party's format)."""

    hi: Any
    lo: Any

    @property
    def shape(self):
        return tuple(self.hi.shape)

    def place(self, layout, replicated):
        return Split(layout, layout)

    def splits_along(self, spec, mesh_shape, dim):
        return True

    def value(self):
        return self.hi.astype(jnp.float32) + self.lo


def _split(x):
    hi = x.astype(jnp.bfloat16)
    return Split(hi, x - hi.astype(jnp.float32))


def split_moments(tx):
    """``tx`` (an adam_jax.adam) with mu and nu stored as :class:`Split` nodes."""
    is_adam = lambda x: isinstance(x, adam_jax.ScaleByAdamState)
    is_split = lambda x: isinstance(x, Split)

    def store(state):
        fix = lambda s: s._replace(mu=jax.tree.map(_split, s.mu), nu=jax.tree.map(_split, s.nu))
        return jax.tree.map(lambda s: fix(s) if is_adam(s) else s, state, is_leaf=is_adam)

    def load(state):
        value = lambda t: jax.tree.map(lambda n: n.value(), t, is_leaf=is_split)
        fix = lambda s: s._replace(mu=value(s.mu), nu=value(s.nu))
        return jax.tree.map(lambda s: fix(s) if is_adam(s) else s, state, is_leaf=is_adam)

    def update(updates, state, params=None):
        updates, inner = tx.update(updates, load(state), params)
        return updates, store(inner)

    return optax.GradientTransformation(lambda params: store(tx.init(params)), update)


def _mesh():
    return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def _params(mesh):
    rng = np.random.default_rng(0)
    host = {"w": rng.normal(size=(16, 4)).astype(np.float32), "b": np.zeros(3, np.float32)}
    return jax.device_put(host, NamedSharding(mesh, P()))


def _grads(n=3):
    rng = np.random.default_rng(1)
    return [{"w": rng.normal(size=(16, 4)), "b": rng.normal(size=3)} for _ in range(n)]


def test_state_sharding_places_each_array_of_the_node_like_its_parameter():
    mesh = _mesh()
    params = {"w": jax.device_put(jnp.ones((16, 4)), NamedSharding(mesh, P("data")))}
    shardings = adam_jax.state_sharding(split_moments(adam_jax.adam(1e-2)), params)
    (adam,) = [x for x in shardings if isinstance(x, adam_jax.ScaleByAdamState)]
    for moment in (adam.mu["w"], adam.nu["w"]):
        assert isinstance(moment, Split)
        assert moment.hi.spec == moment.lo.spec == P("data")
    assert adam.count.spec == P()


def test_partitioned_splits_the_node_and_matches_the_plain_run():
    mesh = _mesh()
    params = _params(mesh)
    tx = split_moments(adam_jax.adam(1e-2))
    part = adam_jax.partitioned(tx, params)
    report = adam_jax.partition_report(tx, params)
    assert report.split == ("['w']",)
    state, plain_state = part.init(params), tx.init(params)
    (adam,) = [x for x in state if isinstance(x, adam_jax.ScaleByAdamState)]
    assert adam.mu["w"].hi.sharding.spec == adam.mu["w"].lo.sharding.spec == P("data", None)
    for g in _grads():
        g = jax.device_put(jax.tree.map(jnp.float32, g), NamedSharding(mesh, P()))
        u, state = jax.jit(part.update)(g, state, params)
        v, plain_state = jax.jit(tx.update)(g, plain_state, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), u, v)


def test_monitor_reads_the_node_through_its_value():
    """The step statistics of the split moments equal those of float32 moments holding the same
    values (bf16 + remainder represents float32 moments exactly to the remainder's rounding)."""
    params = {"w": jnp.ones((16, 4)), "b": jnp.zeros(3)}
    split = adam_jax.monitor(split_moments(adam_jax.adam(1e-2)), every=1)
    plain = adam_jax.monitor(adam_jax.adam(1e-2), every=1)
    s1, s2 = split.init(params), plain.init(params)
    for g in _grads():
        g = jax.tree.map(jnp.float32, g)
        s1 = split.update(g, s1, params)[1]
        s2 = plain.update(g, s2, params)[1]
    a, b = adam_jax.step_stats(s1), adam_jax.step_stats(s2)
    assert a.keys() == b.keys()
    for field in a:
        np.testing.assert_allclose(a[field], b[field], rtol=1e-5, err_msg=field)


def test_a_checkpoint_of_the_node_restores(tmp_path):
    params = {"w": jnp.ones((16, 4)), "b": jnp.zeros(3)}
    tx = split_moments(adam_jax.adam(1e-2))
    state = tx.init(params)
    for g in _grads():
        state = tx.update(jax.tree.map(jnp.float32, g), state, params)[1]
    adam_jax.save_checkpoint(tmp_path / "ckpt", params, state)
    _, restored = adam_jax.restore_checkpoint(tmp_path / "ckpt", tx, params)
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored, state
    )


@pytest.mark.parametrize(
    "tool",
    ["adam_jax.sharding", "adam_jax.partition", "adam_jax.monitoring", "adam_jax.checkpoint"],
)
def test_state_tools_know_the_wrappers_only_through_the_protocol(tool):
    assert GRAPH[tool] & {"adam_jax.flat", "adam_jax.quantize"} == set()
    assert "adam_jax.state_nodes" in GRAPH[tool]


def test_the_package_wrappers_implement_the_protocol():
    params = {"w": jnp.ones((128, 64))}  # large enough for 8-bit moments
    flat = adam_jax.flat_moments(adam_jax.adam(1e-3)).init(params)
    assert isinstance(flat, state_nodes.Regrouped)
    q = adam_jax.quantized_moments(adam_jax.adam(1e-3)).init(params)
    nodes = [x for x in jax.tree.leaves(q, is_leaf=state_nodes.stands_for_one_param)]
    assert any(isinstance(x, state_nodes.ParamNode) for x in nodes)
