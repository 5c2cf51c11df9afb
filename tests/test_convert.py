"""from_optax_state: a run trained with optax and continued with adam_jax follows optax itself.

The reference is always optax: N steps with an optax optimizer, then M more with the same optax
optimizer, against N optax steps, conversion, and M steps of the adam_jax optimizer that continues
it (see the table in ``from_optax_state``'s docstring).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import compat
from adam_jax.convert import from_optax_state
from adam_jax.quantize import QuantizedMoment, dequantize

N, M = 4, 4  # optax steps before the switch, steps after it

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.asarray([0.5, -0.2, 0.1, 0.3])}
MASK = {"w": True, "b": False}
SCHEDULE = optax.linear_schedule(1e-2, 1e-3, N + M)
_NOISE = jax.random.normal(jax.random.key(0), (N + M, 16))


def _grads(params, k):
    """A gradient that depends on the parameters (so that diverging runs stay apart) plus noise
    of a different size per step (so that AdaMax's maximum and AMSGrad's maximum move)."""
    target = {"w": jnp.full((3, 4), 0.3), "b": jnp.zeros(4)}
    g = jax.grad(lambda p: sum(jnp.sum((p[n] - target[n]) ** 2) for n in p))(params)
    noise = (1.0 + k) * _NOISE[k]
    return {"w": g["w"] + noise[:12].reshape(3, 4), "b": g["b"] + noise[12:]}


def _train(tx, params, state, steps, start):
    """``steps`` updates from step ``start``. Not jitted: after the first case every primitive
    is compiled already, where a jitted step would compile once per optimizer."""
    for k in range(start, start + steps):
        updates, state = tx.update(_grads(params, k), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _reference(optax_tx):
    """(params after N optax steps, the optax state then, params after M more optax steps);
    computed once per optax optimizer."""
    if id(optax_tx) not in _REFERENCES:
        mid, optax_state = _train(optax_tx, PARAMS, optax_tx.init(PARAMS), N, 0)
        want, _ = _train(optax_tx, mid, optax_state, M, N)
        _REFERENCES[id(optax_tx)] = mid, optax_state, want
    return _REFERENCES[id(optax_tx)]


_REFERENCES = {}

# One optax optimizer object per reference run, shared by the cases that continue it.
ADAM = optax.adam(1e-2)
ADAMW = optax.adamw(SCHEDULE, weight_decay=0.5, mask=MASK)
ADAM_SCHEDULE = optax.adam(SCHEDULE)
AMSGRAD = optax.amsgrad(1e-2)
B1_SCHEDULE = optax.linear_schedule(0.9, 0.8, N + M)
INJECT = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2, b1=B1_SCHEDULE)
INJECT_OURS = optax.inject_hyperparams(adam_jax.adam)(learning_rate=1e-2, b1=B1_SCHEDULE)

CASES = {
    "adam": (ADAM, adam_jax.adam(1e-2)),
    "adamw_mask_schedule": (ADAMW, adam_jax.adamw(SCHEDULE, weight_decay=0.5, mask=MASK)),
    "adamax": (optax.adamax(1e-2), compat.torch_adamax(1e-2)),
    "nadam": (optax.nadam(1e-2), adam_jax.adam(1e-2, nesterov=True)),
    "amsgrad": (AMSGRAD, adam_jax.adam(1e-2, amsgrad=True)),
    "schedule": (ADAM_SCHEDULE, adam_jax.adam(SCHEDULE)),
    "clip_chain_eps_root": (
        optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2, eps_root=1e-6)),
        optax.chain(optax.clip_by_global_norm(0.5), adam_jax.adam(1e-2, eps_root=1e-6)),
    ),
    "inject": (INJECT, INJECT_OURS),
    # Unpaired schedule counters: the inject state's count is set to the Adam step count.
    "schedule_to_inject": (
        ADAM_SCHEDULE,
        optax.inject_hyperparams(adam_jax.adam)(learning_rate=SCHEDULE),
    ),
    "monitor": (ADAM, adam_jax.monitor(adam_jax.adam(1e-2))),
    "flat_own_buffer": (ADAM, adam_jax.flat_moments(adam_jax.adam(1e-2), max_leaf_size=8)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_continuing_with_adam_jax_follows_optax(name):
    optax_tx, ours = CASES[name]
    mid, optax_state, want = _reference(optax_tx)
    state = from_optax_state(optax_state, ours, mid)
    _assert_like(state, ours.init(mid))
    got, _ = _train(ours, mid, state, M, N)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)


def test_under_jit_the_same_state():
    optax_tx, ours = CASES["adamw_mask_schedule"]
    mid, optax_state, _ = _reference(optax_tx)
    jitted = jax.jit(lambda s, p: from_optax_state(s, ours, p))(optax_state, mid)
    chex.assert_trees_all_equal(jitted, from_optax_state(optax_state, ours, mid))


def _assert_like(state, fresh):
    """Same tree, shapes and dtypes as ``fresh`` (a jitted step does not trace again)."""
    assert jax.tree.structure(state) == jax.tree.structure(fresh)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, fresh)


def test_the_moments_and_count_are_optax_s():
    mid, optax_state, _ = _reference(AMSGRAD)
    tx = adam_jax.adam(1e-2, amsgrad=True, mu_dtype=jnp.bfloat16)
    (adam_state, _) = from_optax_state(optax_state, tx, mid)
    assert int(adam_state.count) == N and adam_state.count.dtype == jnp.int32
    chex.assert_trees_all_close(adam_state.nu, optax_state[0].nu)
    chex.assert_trees_all_close(adam_state.nu_max, optax_state[0].nu_max)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(adam_state.mu))  # tx's dtypes
    chex.assert_trees_all_close(
        adam_state.mu, jax.tree.map(lambda x: x.astype(jnp.bfloat16), optax_state[0].mu)
    )


def test_the_hyperparameter_record_is_tx_s():
    _, optax_state, _ = _reference(ADAM)
    state = from_optax_state(optax_state, adam_jax.adam(3e-2, b1=0.5), PARAMS)
    assert adam_jax.hyperparams(state)["b1"] == pytest.approx(0.5)
    assert adam_jax.hyperparams(state)["learning_rate"] == pytest.approx(3e-2)


def test_injected_values_changed_in_the_optax_state_are_carried():
    mid, optax_state, _ = _reference(INJECT)
    hyperparams = {**optax_state.hyperparams, "learning_rate": jnp.asarray(3e-3)}
    optax_state = optax_state._replace(hyperparams=hyperparams)  # changed by the user mid-run
    want, _ = _train(INJECT, mid, optax_state, M, N)
    state = from_optax_state(optax_state, INJECT_OURS, mid)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(3e-3)
    assert int(state.hyperparams_states["b1"].count) == N
    got, _ = _train(INJECT_OURS, mid, state, M, N)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("wrap", ["quantized", "flat_quantized"])
def test_quantized_moments_get_optax_s_moments_in_8_bits(wrap):
    inner = adam_jax.quantized_moments(adam_jax.adam(1e-2), block_size=4, min_size=0)
    tx = adam_jax.flat_moments(inner) if wrap == "flat_quantized" else inner
    mid, optax_state, _ = _reference(ADAM)
    state = from_optax_state(optax_state, tx, mid)
    _assert_like(state, tx.init(mid))
    (adam_state,) = [
        n
        for n in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, adam_jax.ScaleByAdamState))
        if isinstance(n, adam_jax.ScaleByAdamState)
    ]
    assert int(adam_state.count) == N
    decoded = [dequantize(q) for q in jax.tree.leaves(adam_state.mu, is_leaf=_is_q)]
    assert all(_is_q(q) for q in jax.tree.leaves(adam_state.mu, is_leaf=_is_q))
    want = jax.tree.leaves(optax_state[0].mu)
    if wrap == "flat_quantized":  # one buffer: the leaves concatenated in tree order
        want = [jnp.concatenate([x.ravel() for x in want])]
    for d, w in zip(decoded, want, strict=True):  # codes are 6-12.5% apart
        np.testing.assert_allclose(d, w, rtol=0.07, atol=1e-3 * float(jnp.max(jnp.abs(w))))


def _is_q(x):
    return isinstance(x, QuantizedMoment)


def test_a_real_orbax_checkpoint(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    optax_tx, ours = CASES["adamw_mask_schedule"]
    mid, optax_state, want = _reference(optax_tx)

    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp_path / "ckpt", {"params": mid, "opt_state": optax_state})
    ckptr.wait_until_finished()
    abstract = jax.eval_shape(lambda: {"params": PARAMS, "opt_state": optax_tx.init(PARAMS)})
    restored = ckptr.restore(tmp_path / "ckpt", abstract)

    state = from_optax_state(restored["opt_state"], ours, restored["params"])
    got, _ = _train(ours, restored["params"], state, M, N)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)

    # Restored without its structure, the state is plain dicts: the error says how to restore.
    plain = ckptr.restore(tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"restored without its structure.*eval_shape"):
        from_optax_state(plain["opt_state"], ours, restored["params"])


# --- errors -------------------------------------------------------------------------------------


def _optax_state(tx=None, params=PARAMS):
    tx = optax.adam(1e-2) if tx is None else tx
    return tx.init(params)


def test_a_different_number_of_adam_states_is_refused():
    labels = {"w": "a", "b": "b"}
    two = optax.multi_transform({"a": optax.adam(1e-2), "b": optax.adam(1e-3)}, labels)
    with pytest.raises(ValueError, match=r"optax_state holds 2 Adam states .* tx holds 1"):
        from_optax_state(_optax_state(two), adam_jax.adam(1e-2), PARAMS)


def test_a_partition_with_as_many_adams_converts():
    labels = {"w": "a", "b": "b"}
    optax_tx = optax.multi_transform({"a": optax.adam(1e-2), "b": optax.adamax(1e-2)}, labels)
    ours = optax.multi_transform({"a": adam_jax.adam(1e-2), "b": compat.torch_adamax(1e-2)}, labels)
    mid, optax_state, want = _reference(optax_tx)
    got, _ = _train(ours, mid, from_optax_state(optax_state, ours, mid), M, N)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)


def test_no_adam_on_either_side_is_refused():
    with pytest.raises(ValueError, match=r"optax_state holds no optax.ScaleByAdamState"):
        from_optax_state(_optax_state(optax.sgd(0.1, momentum=0.9)), adam_jax.adam(), PARAMS)
    with pytest.raises(ValueError, match=r"tx.init\(params\) holds no adam_jax"):
        from_optax_state(_optax_state(), optax.sgd(0.1, momentum=0.9), PARAMS)


def test_a_shape_mismatch_names_the_leaf_and_both_shapes():
    other = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(4)}
    with pytest.raises(
        ValueError, match=r"\.mu\['w'\] has shape \(3, 4\) in optax_state but \(4, 3\)"
    ):
        from_optax_state(_optax_state(), adam_jax.adam(), other)


def test_a_different_tree_names_the_leaves():
    other = {"w": jnp.zeros((3, 4)), "c": jnp.zeros(4)}
    with pytest.raises(ValueError, match=r"only in the optax state: \[\"\['b'\]\"\], only in tx's"):
        from_optax_state(_optax_state(), adam_jax.adam(), other)


def test_amsgrad_on_one_side_only_is_refused():
    with pytest.raises(ValueError, match=r"tx runs AMSGrad.*optax.ScaleByAdamState"):
        from_optax_state(_optax_state(), adam_jax.adam(amsgrad=True), PARAMS)
    with pytest.raises(ValueError, match=r"amsgrad=True"):
        from_optax_state(_optax_state(optax.amsgrad(1e-2)), adam_jax.adam(), PARAMS)


def test_tx_must_be_a_transformation():
    with pytest.raises(TypeError, match=r"tx must be an optax.GradientTransformation"):
        from_optax_state(_optax_state(), adam_jax.adam, PARAMS)
