"""scale_by_adam, scale_by_adamax and bias_correction against the paper reference (tests/reference.py)."""

from __future__ import annotations

import inspect
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import compat
from tests import reference
from tests.helpers import assert_normwise_close, reference_per_leaf, run_updates

STEPS = 220

# Every combination of the structural switches, with and without the Theorem 4.1 decay and eps_root.
ADAM_OPTIONS = [
    dict(eps_hat=e, bias_correction=bc, amsgrad=a, nesterov=n, b1_decay=lam, eps_root=er)
    for e, bc, a, n, lam, er in itertools.product(
        [False, True], [True, False], [False, True], [False, True], [1.0, 0.99], [0.0, 1e-6]
    )
]
ADAM_HYPER = [dict(b1=0.9, b2=0.999, eps=1e-8), dict(b1=0.0, b2=0.99, eps=0.0)]
ADAMAX_OPTIONS = [
    dict(bias_correction=bc, b1_decay=lam, eps=eps, b1=b1, b2=b2)
    for bc, lam, eps, (b1, b2) in itertools.product(
        [True, False], [1.0, 0.99], [0.0, 1e-8], [(0.9, 0.999), (0.5, 0.9)]
    )
]


def _opt_id(opts):
    return ",".join(f"{k}={v}" for k, v in opts.items())


@pytest.mark.parametrize("hyper", ADAM_HYPER, ids=_opt_id)
@pytest.mark.parametrize("options", ADAM_OPTIONS, ids=_opt_id)
def test_adam_matches_reference_float64(options, hyper):
    with jax.enable_x64(True):
        grads = reference.gradient_sequence(STEPS)
        ours, _ = run_updates(adam_jax.scale_by_adam(**hyper, **options), grads)
        ref = reference_per_leaf(reference.adam, grads, **hyper, **options)
        for k in ref:
            assert ours[k].dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(ours[k]), ref[k], rtol=1e-9, atol=0)


@pytest.mark.parametrize("hyper", [*ADAM_HYPER, dict(b2=0.9999)], ids=_opt_id)
@pytest.mark.parametrize("options", ADAM_OPTIONS, ids=_opt_id)
def test_adam_matches_reference_float32(options, hyper):
    """float32 to 3e-6 normwise: (1 - b) and 1 - b^t are formed from the exact Python b, so
    b = 0.9999 (not a float32 number) costs no accuracy, with or without bias correction."""
    grads = reference.gradient_sequence(STEPS, dtype=np.float32)
    ours, _ = run_updates(adam_jax.scale_by_adam(**hyper, **options), grads)
    ref = reference_per_leaf(reference.adam, grads, **hyper, **options)
    assert ours["dense"].dtype == jnp.float32
    assert_normwise_close(ours, ref, rtol=3e-6)


@pytest.mark.parametrize("options", ADAMAX_OPTIONS, ids=_opt_id)
def test_adamax_matches_reference(options):
    with jax.enable_x64(True):
        grads = reference.gradient_sequence(STEPS)
        ours, _ = run_updates(adam_jax.scale_by_adamax(**options), grads)
        ref = reference_per_leaf(reference.adamax, grads, **options)
        for k in ref:
            np.testing.assert_allclose(np.asarray(ours[k]), ref[k], rtol=1e-9, atol=0)
    grads32 = reference.gradient_sequence(STEPS, dtype=np.float32)
    ours32, _ = run_updates(adam_jax.scale_by_adamax(**options), grads32)
    assert_normwise_close(ours32, reference_per_leaf(reference.adamax, grads32, **options), 1e-5)


def test_adamax_all_zero_gradients_give_zero_update_not_nan():
    grads = [{"w": np.zeros(3, np.float32)}] * 5 + [{"w": np.array([0, 1, -2], np.float32)}]
    ours, _ = run_updates(adam_jax.scale_by_adamax(), grads)
    np.testing.assert_array_equal(np.asarray(ours["w"][:5]), 0.0)
    # t = 6: m_6 = (1-b1) g and u_6 = |g|, so the update is sign(g) (1-b1)/(1-b1^6).
    expected = np.array([0, 1, -1]) * 0.1 / (1 - 0.9**6)
    np.testing.assert_allclose(np.asarray(ours["w"][5]), expected, rtol=1e-6)


@pytest.mark.parametrize("options", [{}, {"amsgrad": True}, {"eps_hat": True, "nesterov": True}])
def test_complex_parameters_match_reference(options):
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        grads = [{"z": rng.normal(size=(4,)) + 1j * rng.normal(size=(4,))} for _ in range(STEPS)]
        ours, state = run_updates(adam_jax.scale_by_adam(**options), grads)
        assert state.nu["z"].dtype == jnp.float64  # |g|^2 is real
        assert state.mu["z"].dtype == jnp.complex128
        ref = reference_per_leaf(reference.adam, grads, **options)
        np.testing.assert_allclose(np.asarray(ours["z"]), ref["z"], rtol=1e-9)
        ours_max, state_max = run_updates(adam_jax.scale_by_adamax(), grads)
        assert state_max.nu["z"].dtype == jnp.float64
        ref_max = reference_per_leaf(reference.adamax, grads)
        np.testing.assert_allclose(np.asarray(ours_max["z"]), ref_max["z"], rtol=1e-9)


def test_b1_decay_uses_exact_product_debiasing():
    """With lambda < 1 the first step's update is exactly g/|g| and later ones follow the product."""
    with jax.enable_x64(True):
        lam = 0.9
        grads = [{"w": np.array([2.0])} for _ in range(6)]
        ours, _ = run_updates(adam_jax.scale_by_adam(b1_decay=lam, eps=0.0), grads)
        # Constant gradient: m_t = g (1 - prod b1_i) exactly, so m_hat = g at every step.
        np.testing.assert_allclose(np.asarray(ours["w"][:, 0]), 1.0, rtol=1e-12)


# ---- equality with optax where the conventions coincide -------------------------------------


OPTAX_PAIRS = {
    "adam": (lambda: adam_jax.adam(3e-3), lambda: optax.adam(3e-3)),
    "eps_root": (
        lambda: adam_jax.adam(3e-3, eps_root=1e-8),
        lambda: optax.adam(3e-3, eps_root=1e-8),
    ),
    "nesterov": (
        lambda: adam_jax.adam(3e-3, nesterov=True),
        lambda: optax.adam(3e-3, nesterov=True),
    ),
    "amsgrad": (lambda: adam_jax.adam(3e-3, amsgrad=True), lambda: optax.amsgrad(3e-3)),
    "adamax": (lambda: adam_jax.adamax(3e-3), lambda: optax.adamax(3e-3, eps=0.0)),
}


@pytest.mark.parametrize("name", list(OPTAX_PAIRS))
@pytest.mark.parametrize("x64", [True, False], ids=["float64", "float32"])
def test_equals_optax(name, x64):
    """Same numbers as optax where the conventions coincide.

    float64: to 1e-9. float32: to 2e-5 normwise per step, because optax forms (1 - b2) in float64 but 1 - b2^t in
    float32, so its v_hat is off by ~1e-5 relative at small t (b2 = 0.999 is not a float32 number);
    adam_jax uses float32(b2) consistently in both and matches the float64 reference to 1e-5.
    """
    ours, theirs = OPTAX_PAIRS[name]
    with jax.enable_x64(x64):
        grads = reference.gradient_sequence(STEPS, seed=5, dtype=np.float64 if x64 else np.float32)
        for g in grads:  # optax.adamax divides 0 by 0 where u_t = 0; keep every u_t > 0
            g["sparse"] = g["sparse"] + 0.5
        a, _ = run_updates(ours(), grads)
        b, _ = run_updates(theirs(), grads)
        if x64:
            chex.assert_trees_all_close(a, b, rtol=1e-9, atol=0)
        else:
            assert_normwise_close(a, jax.tree.map(np.asarray, b), rtol=2e-5)


def _debiased_ema_reference(grads, d):
    """NumPy float64: m_t = d m + (1-d) g, divided by 1 - d^t (Section 3)."""
    out, m = [], {k: 0.0 for k in grads[0]}
    for t, g in enumerate(grads, start=1):
        m = {k: d * m[k] + (1 - d) * np.asarray(g[k], np.float64) for k in g}
        out.append({k: m[k] / (1 - d**t) for k in g})
    return {k: np.stack([o[k] for o in out]) for k in grads[0]}


@pytest.mark.parametrize("d", [0.0, 0.5, 0.9, 0.999])
def test_bias_correction_after_ema_equals_debiased_ema(d):
    """chain(ema(d, debias=False), bias_correction(d)) == ema(d, debias=True).

    float64: equal to 1e-12. float32: ours is within 1e-6 of the float64 reference; optax's
    debiased ema forms 1 - float32(d)^t, which is ~1e-5 off at small t for d = 0.999, so the two
    agree to 2e-5 there.
    """
    ours = optax.chain(optax.ema(d, debias=False), adam_jax.bias_correction(d))
    with jax.enable_x64(True):
        grads = reference.gradient_sequence(50)
        a, _ = run_updates(ours, grads)
        b, _ = run_updates(optax.ema(d, debias=True), grads)
        chex.assert_trees_all_close(a, b, rtol=1e-12)
    grads32 = reference.gradient_sequence(50, dtype=np.float32)
    ref = _debiased_ema_reference(grads32, d)
    a, _ = run_updates(ours, grads32)
    b, _ = run_updates(optax.ema(d, debias=True), grads32)
    assert_normwise_close(a, ref, rtol=1e-6)
    assert_normwise_close(jax.tree.map(np.asarray, b), jax.tree.map(np.asarray, a), rtol=2e-5)


def test_bias_correction_divides_by_one_minus_decay_power_t():
    grads = [{"w": np.ones(2, np.float32)}] * 4
    out, state = run_updates(adam_jax.bias_correction(0.5), grads)
    np.testing.assert_allclose(np.asarray(out["w"][:, 0]), [2.0, 4 / 3, 8 / 7, 16 / 15], rtol=1e-6)
    assert int(state.count) == 4


def test_inverse_sqrt_schedule():
    sched = adam_jax.inverse_sqrt_schedule(0.1)
    np.testing.assert_allclose([float(sched(c)) for c in range(4)], 0.1 / np.sqrt([1, 2, 3, 4]))
    tx = adam_jax.adam(adam_jax.inverse_sqrt_schedule(0.1))
    grads = [{"w": np.ones(1, np.float32)}] * 4
    out, _ = run_updates(tx, grads)
    # Constant gradient: the rescaled update is 1 at every step, so the step is -alpha/sqrt(t).
    np.testing.assert_allclose(np.asarray(out["w"][:, 0]), -0.1 / np.sqrt([1, 2, 3, 4]), rtol=1e-5)


# The PyTorch conventions live in adam_jax.compat (through the core's private hooks); with lr = 1
# a preset's update is minus the rescaled gradient, checked here against the NumPy reference.
@pytest.mark.parametrize("hyper", ADAM_HYPER, ids=_opt_id)
def test_torch_amsgrad_raw_max_matches_reference(hyper):
    with jax.enable_x64(True):
        grads = reference.gradient_sequence(STEPS)
        tx = compat.torch_adam(1.0, (hyper["b1"], hyper["b2"]), hyper["eps"], amsgrad=True)
        ours, _ = run_updates(tx, grads)
        ref = reference_per_leaf(reference.adam, grads, **hyper, amsgrad=True, amsgrad_raw_max=True)
        for k in ref:
            np.testing.assert_allclose(-np.asarray(ours[k]), ref[k], rtol=1e-9, atol=0)
        # The raw maximum is a different rule from the maximum of v_hat (scale_by_adam's).
        other = reference_per_leaf(reference.adam, grads, **hyper, amsgrad=True)
        assert any(not np.allclose(-ours[k], other[k], rtol=1e-6) for k in ref)


@pytest.mark.parametrize("eps", [1e-8, 1e-2])
def test_torch_adamax_eps_in_max_matches_reference(eps):
    with jax.enable_x64(True):
        grads = reference.gradient_sequence(STEPS)
        ours, _ = run_updates(compat.torch_adamax(1.0, eps=eps), grads)
        ref = reference_per_leaf(reference.adamax, grads, eps=eps, eps_in_max=True)
        for k in ref:
            np.testing.assert_allclose(-np.asarray(ours[k]), ref[k], rtol=1e-9, atol=0)
        if eps >= 1e-2:  # a large eps makes the placement visible
            outside = reference_per_leaf(reference.adamax, grads, eps=eps)
            assert not np.allclose(-ours["sparse"], outside["sparse"], rtol=1e-6)


def test_the_pytorch_conventions_are_documented_keyword_switches():
    """PyTorch's AMSGrad maximum and AdaMax eps placement are keyword-only switches of the core
    transformations, off by default and documented there (the compat presets turn them on)."""
    for fn, name in [
        (adam_jax.scale_by_adam, "raw_amsgrad_max"),
        (adam_jax.scale_by_adamax, "eps_in_max"),
    ]:
        parameter = inspect.signature(fn).parameters[name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default is False
        assert f"{name}:" in fn.__doc__
