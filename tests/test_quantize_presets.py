"""8-bit moments behind every transformation that can precede the rescaler.

``quantized_moments(tx)`` must store the moments of ``tx`` whatever ``tx`` does to the gradient
before its ``scale_by_adam``/``scale_by_adamax``: flip its sign (``maximize``), add an L2 term
(PyTorch's coupled ``weight_decay``), clip it, accumulate it (``optax.MultiSteps``) or anything a
user writes. The reference is float32 ``tx`` itself (adam_jax's float32 moments, checked against
NumPy and optax elsewhere), run from the decoded 8-bit state or along the same gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adam_jax
from adam_jax import compat
from adam_jax.quantize import QuantizedMoment, code_values, dequantize, quantized_moments
from adam_jax.transforms import ScaleByAdamaxState, ScaleByAdamState
from tests.helpers import param_trajectory

LR = 1e-2
SHAPE = (8, 512)  # two blocks of 256 per row


def _flip_and_scale() -> optax.GradientTransformation:
    """A user's transformation before the rescaler: -3 g + 0.5 theta (sign, size and params)."""

    def update_fn(updates, state, params=None):
        return jax.tree.map(lambda g, p: -3.0 * g + 0.5 * p, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _multi_steps(tx: optax.GradientTransformation, k: int) -> optax.GradientTransformation:
    return optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()


PRESETS = {
    "torch_adam": lambda: compat.torch_adam(LR),
    "torch_adam-maximize": lambda: compat.torch_adam(LR, maximize=True),
    "torch_adam-l2": lambda: compat.torch_adam(LR, weight_decay=1e-2),
    "torch_adam-decoupled": lambda: compat.torch_adam(
        LR, weight_decay=1e-2, decoupled_weight_decay=True
    ),
    "torch_adam-amsgrad": lambda: compat.torch_adam(LR, amsgrad=True),
    "torch_adam-amsgrad-maximize-l2": lambda: compat.torch_adam(
        LR, weight_decay=0.1, amsgrad=True, maximize=True
    ),
    "torch_adamw": lambda: compat.torch_adamw(LR),
    "torch_adamw-maximize-amsgrad": lambda: compat.torch_adamw(LR, amsgrad=True, maximize=True),
    "torch_adamax": lambda: compat.torch_adamax(LR),
    "torch_adamax-maximize-l2": lambda: compat.torch_adamax(LR, weight_decay=0.1, maximize=True),
    "keras_adam": lambda: compat.keras_adam(LR),
    "keras_adam-amsgrad-decay": lambda: compat.keras_adam(LR, amsgrad=True, weight_decay=1e-2),
    "keras_adamw": lambda: compat.keras_adamw(LR),
    "keras_adamax": lambda: compat.keras_adamax(LR),
    "keras_adamax-decay": lambda: compat.keras_adamax(LR, weight_decay=1e-2),
    "adam": lambda: adam_jax.adam(LR),
    "adam-nesterov-eps_hat": lambda: adam_jax.adam(LR, nesterov=True, eps_hat=True),
    "adamw": lambda: adam_jax.adamw(LR, weight_decay=1e-2),
    "adamax": lambda: adam_jax.adamax(LR),
    "clip_by_global_norm": lambda: optax.chain(optax.clip_by_global_norm(1.0), adam_jax.adam(LR)),
    "clip": lambda: optax.chain(optax.clip(0.05), adam_jax.adamax(LR)),
    "custom": lambda: optax.chain(_flip_and_scale(), adam_jax.adam(LR, amsgrad=True)),
    "multisteps": lambda: _multi_steps(adam_jax.adam(LR), 3),
    "multisteps-torch-maximize-l2": lambda: _multi_steps(
        compat.torch_adam(LR, weight_decay=0.1, maximize=True), 2
    ),
}


def _is_moments(x) -> bool:
    return isinstance(x, (ScaleByAdamState, ScaleByAdamaxState))


def _is_q(x) -> bool:
    return isinstance(x, QuantizedMoment)


def _decoded(state):
    return jax.tree.map(lambda x: dequantize(x) if _is_q(x) else x, state, is_leaf=_is_q)


def _pairs(exact_state, stored_state) -> list[tuple[np.ndarray, QuantizedMoment]]:
    """(float32 moment, its 8-bit counterpart) for every stored moment, paired by structure."""
    found = []

    def pair(exact, stored):
        if _is_q(stored):
            found.append((np.asarray(exact, np.float64), stored))

    jax.tree.map(pair, exact_state, stored_state)
    return found


def _gradients(steps: int, seed: int = 0) -> list[dict]:
    """Gradients whose size varies by row (1e-3 to 10) and by step."""
    rng = np.random.default_rng(seed)
    rows = 10.0 ** np.linspace(-3, 1, SHAPE[0])[:, None]
    return [
        {"w": jnp.asarray(rng.normal(size=SHAPE) * rows * rng.uniform(0.5, 2), jnp.float32)}
        for _ in range(steps)
    ]


def _params() -> dict:
    return {"w": jnp.asarray(np.random.default_rng(9).normal(size=SHAPE), jnp.float32)}


def _first_moment(state) -> np.ndarray:
    nodes = [n for n in jax.tree.leaves(state, is_leaf=_is_moments) if _is_moments(n)]
    assert len(nodes) == 1
    mu = nodes[0].mu["w"]
    return np.asarray(dequantize(mu) if _is_q(mu) else mu, np.float64)


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_stored_moment_is_within_one_code_of_float32_from_the_same_state(name):
    """Step by step: float32 ``tx`` run from the decoded 8-bit state gives the exact new moments.
    The stored scales bound them (nothing saturates, no scale is negative), each stored value is
    within one code step of the exact one, and the updates are float32's."""
    tx32 = PRESETS[name]()
    tx8 = quantized_moments(PRESETS[name](), min_size=0)
    params = _params()
    state = tx8.init(params)
    update8, update32 = jax.jit(tx8.update), jax.jit(tx32.update)
    for t, g in enumerate(_gradients(12)):
        want_u, want = update32(g, _decoded(state.inner_state), params)
        got_u, state = update8(g, state, params)
        np.testing.assert_allclose(got_u["w"], want_u["w"], rtol=1e-4, atol=1e-7)
        pairs = _pairs(want, state.inner_state)
        assert len(pairs) >= 2
        for exact, stored in pairs:
            scale = np.repeat(np.asarray(stored.scales, np.float64), 256, axis=-1)
            assert np.all(scale >= 0) and np.all(np.isfinite(scale)), (t, scale.min())
            assert np.all(np.abs(exact) <= scale * (1 + 1e-6)), (t, "a value beyond its scale")
            grid = code_values(stored.codes.dtype == jnp.int8, stored.exponent_bits)
            unit = np.abs(exact) / np.where(scale > 0, scale, 1)
            i = np.clip(np.searchsorted(grid, unit, "right") - 1, 0, len(grid) - 2)
            step = scale * (grid[i + 1] - grid[i])
            back = np.asarray(dequantize(stored), np.float64)
            assert np.all(np.abs(back - exact) <= step * (1 + 1e-5) + 1e-30), t
        params = optax.apply_updates(params, got_u)


@pytest.mark.parametrize("name", list(PRESETS))
def test_first_moment_and_parameters_track_float32_over_20_steps(name):
    """Along the same 20 gradients: the first moment within the 8-bit format's precision of the
    float32 one, the parameters within 20% of their largest travel (measured: 5-13%)."""
    grads, params = _gradients(20, seed=1), _params()
    thetas32, state32 = param_trajectory(PRESETS[name](), grads, params)
    thetas8, state8 = param_trajectory(
        quantized_moments(PRESETS[name](), min_size=0), grads, params
    )
    m32, m8 = _first_moment(state32), _first_moment(state8)
    # 3 mantissa bits: stored values 6-12.5% apart, rounded stochastically (unbiased), so each
    # step adds an error of about 4% (standard deviation), and m carries those of the last
    # 1/(1 - b1^2) ~ 5 steps: about 10% (measured 5.5-10.8% over these cases).
    assert np.linalg.norm(m8 - m32) <= 0.15 * np.linalg.norm(m32), name
    travel = np.max(np.abs(np.asarray(thetas32["w"]) - np.asarray(params["w"])))
    err = np.max(np.abs(np.asarray(thetas8["w"]) - np.asarray(thetas32["w"])))
    assert travel > 0 and err <= 0.2 * travel, (name, err, travel)


def _ten_steps(tx, gradient: float, steps: int = 10):
    params = {"w": jnp.full((4096,), 3.0)}
    grads = [{"w": jnp.full((4096,), gradient)}] * steps
    thetas, state = param_trajectory(tx, grads, params)
    return float(thetas["w"][-1, 0]), _first_moment(state)[0], state


def test_maximize_keeps_the_first_moment():
    """Reported: behind maximize's sign flip the block scales were negative and m decoded to 0
    (float32: m = -0.651 after 10 steps of g = 1)."""
    p32, m32, _ = _ten_steps(compat.torch_adam(LR, maximize=True), 1.0)
    p8, m8, state = _ten_steps(quantized_moments(compat.torch_adam(LR, maximize=True)), 1.0)
    np.testing.assert_allclose(m32, -0.6513, rtol=1e-3)
    np.testing.assert_allclose(m8, m32, rtol=0.07)
    np.testing.assert_allclose(p8, p32, atol=1e-3)  # 3.1: ten steps of +lr
    scales = [x.scales for x in jax.tree.leaves(state, is_leaf=_is_q) if _is_q(x)]
    assert all(np.all(np.asarray(s) > 0) for s in scales)


def test_l2_weight_decay_before_the_rescaler_is_stored():
    """Reported: with PyTorch's L2 decay (g + wd theta before the moments) and g = 0, the 8-bit m
    was 0 after 10 steps (float32: 0.0192) and theta ended at 2.9399 (float32: 2.9001)."""
    p32, m32, _ = _ten_steps(compat.torch_adam(LR, weight_decay=1e-2), 0.0)
    p8, m8, _ = _ten_steps(quantized_moments(compat.torch_adam(LR, weight_decay=1e-2)), 0.0)
    np.testing.assert_allclose([m32, p32], [0.01919, 2.9001], rtol=1e-3)
    np.testing.assert_allclose(m8, m32, rtol=0.07)
    np.testing.assert_allclose(p8, p32, atol=1e-3)


def test_multi_steps_inside_keeps_the_first_moment():
    """Reported: with optax.MultiSteps inside, after two windows of 2 the 8-bit m was far below
    float32's 0.0475 (the bound pass saw a window's accumulator as zeros)."""
    p32, m32, _ = _ten_steps(_multi_steps(adam_jax.adam(LR), 2), 0.25, steps=4)
    p8, m8, _ = _ten_steps(quantized_moments(_multi_steps(adam_jax.adam(LR), 2)), 0.25, steps=4)
    np.testing.assert_allclose(m32, 0.0475, rtol=1e-3)
    np.testing.assert_allclose(m8, m32, rtol=0.07)
    np.testing.assert_allclose(p8, p32, atol=1e-4)


def test_multi_steps_windows_that_do_not_update_keep_the_stored_moments():
    """Within a MultiSteps window the moments do not change, and neither does their 8-bit form:
    re-encoding an unchanged moment gives back its codes (no extra rounding noise)."""
    tx = quantized_moments(_multi_steps(adam_jax.adam(LR), 4), min_size=0)
    params = _params()
    grads = _gradients(8, seed=2)
    state = tx.init(params)
    update = jax.jit(tx.update)
    _, state = update(grads[0], state, params)
    for g in grads[1:4]:
        _, state = update(g, state, params)
    before = [x for x in jax.tree.leaves(state, is_leaf=_is_q) if _is_q(x)]
    for g in grads[4:7]:  # steps 5-7 accumulate; the inner Adam runs at step 8
        _, state = update(g, state, params)
    after = [x for x in jax.tree.leaves(state, is_leaf=_is_q) if _is_q(x)]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(np.asarray(a.codes), np.asarray(b.codes))
        np.testing.assert_allclose(np.asarray(a.scales), np.asarray(b.scales), rtol=1e-6)


@pytest.mark.parametrize("inside", [True, False])
def test_apply_if_finite_skips_a_nan_step_without_touching_the_codes(inside):
    """A NaN gradient skipped by ``optax.apply_if_finite`` (wrapped inside or outside) leaves the
    8-bit state as it was, codes and scales, and the parameters follow float32's."""
    finite = lambda tx: optax.apply_if_finite(tx, max_consecutive_errors=5)
    tx8 = (
        quantized_moments(finite(adam_jax.adam(LR)), min_size=0)
        if inside
        else finite(quantized_moments(adam_jax.adam(LR), min_size=0))
    )
    grads, params = _gradients(6, seed=3), _params()
    grads[3] = {"w": grads[3]["w"].at[2, 9].set(jnp.nan)}
    thetas32, _ = param_trajectory(finite(adam_jax.adam(LR)), grads, params)
    state = tx8.init(params)
    update = jax.jit(tx8.update)
    thetas8 = []
    for t, g in enumerate(grads):
        before = [x for x in jax.tree.leaves(state, is_leaf=_is_q) if _is_q(x)]
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        thetas8.append(np.asarray(params["w"]))
        if t == 3:
            after = [x for x in jax.tree.leaves(state, is_leaf=_is_q) if _is_q(x)]
            for a, b in zip(before, after, strict=True):
                np.testing.assert_array_equal(np.asarray(a.codes), np.asarray(b.codes))
                np.testing.assert_array_equal(np.asarray(a.scales), np.asarray(b.scales))
    np.testing.assert_array_equal(thetas8[3], thetas8[2])
    assert np.all(np.isfinite(thetas8[-1]))
    assert np.max(np.abs(thetas8[-1] - np.asarray(thetas32["w"][-1]))) <= 0.01
