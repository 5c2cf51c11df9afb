"""Section 2.1 of the paper as tests: the step-size bound, scale invariance, AdaMax's |step| <= alpha,
and convergence on a parabola and on Rosenbrock's function."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adam_jax
from tests import reference
from tests.helpers import minimize, run_updates

ALPHA = 1e-2


def _random_sequences(seed, steps=300, shape=(64,)):
    """Bounded iid gradients with per-element scales spanning 4 decades, plus sparse elements."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-2, 2, size=shape)
    mask = rng.uniform(size=shape) < 0.25  # a quarter of the elements see a gradient 1 step in 20
    seq = []
    for t in range(steps):
        g = scale * (rng.normal(size=shape) + rng.uniform(-1, 1, size=shape))
        if t > 0 and t % 20:
            g = np.where(mask, 0.0, g)
        seq.append({"w": g.astype(np.float32)})
    return seq


@pytest.mark.parametrize("b1, b2", [(0.9, 0.999), (0.95, 0.99), (0.0, 0.999), (0.5, 0.9)])
def test_adam_step_within_paper_bound(b1, b2):
    """|Delta_t| <= alpha*(1-b1)/sqrt(1-b2) if (1-b1) > sqrt(1-b2), else alpha (eps = 0)."""
    for seed in range(3):
        grads = _random_sequences(seed)
        steps, _ = run_updates(adam_jax.adam(ALPHA, b1=b1, b2=b2, eps=0.0), grads)
        bound = ALPHA * reference.step_bound(b1, b2)
        assert float(jnp.max(jnp.abs(steps["w"]))) <= bound * (1 + 1e-5)


def test_adam_reaches_the_sparse_bound():
    """The extreme sparse case (one gradient after a long silence) approaches the larger bound."""
    b1, b2 = 0.9, 0.999
    grads = [{"w": np.ones(1, np.float32)}] + [{"w": np.zeros(1, np.float32)}] * 3000
    grads.append({"w": np.ones(1, np.float32)})
    steps, _ = run_updates(adam_jax.adam(ALPHA, b1=b1, b2=b2, eps=0.0), grads)
    last = abs(float(steps["w"][-1, 0]))
    paper = ALPHA * (1 - b1) / np.sqrt(1 - b2)
    assert 0.9 * paper < last <= paper * (1 + 1e-5)  # > alpha, as the paper says is possible


def test_adam_strict_bound_holds_for_adversarial_growth():
    """Gradients growing by b2/b1 per step exceed the paper's bound but never the Cauchy-Schwarz one."""
    b1, b2, steps_n = 0.9, 0.999, 400
    grads = [{"w": np.array([(b2 / b1) ** t], np.float64)} for t in range(steps_n)]
    with jax.enable_x64(True):
        steps, _ = run_updates(adam_jax.adam(1.0, b1=b1, b2=b2, eps=0.0), grads)
    ratios = np.abs(np.asarray(steps["w"][:, 0]))
    strict = np.array([reference.strict_step_bound(b1, b2, t) for t in range(1, steps_n + 1)])
    assert np.all(ratios <= strict * (1 + 1e-9))
    assert ratios.max() > reference.step_bound(b1, b2)  # the paper's bound is not strict


@pytest.mark.parametrize("c", [1e-6, 1e-3, 7.0, 1e4])
@pytest.mark.parametrize(
    "make", [adam_jax.adam, lambda lr, eps: adam_jax.adamax(lr, eps=eps)], ids=["adam", "adamax"]
)
def test_invariant_to_gradient_scale(c, make):
    """With eps = 0 the step is invariant to rescaling every gradient by c > 0."""
    with jax.enable_x64(True):
        grads = reference.gradient_sequence(200)
        scaled = [jax.tree.map(lambda g: c * g, g) for g in grads]
        a, _ = run_updates(make(ALPHA, eps=0.0), grads)
        b, _ = run_updates(make(ALPHA, eps=0.0), scaled)
        for k in a:
            np.testing.assert_allclose(np.asarray(b[k]), np.asarray(a[k]), rtol=1e-10)


def test_adamax_step_at_most_alpha():
    for seed in range(3):
        grads = _random_sequences(seed)
        steps, _ = run_updates(adam_jax.adamax(ALPHA), grads)
        assert float(jnp.max(jnp.abs(steps["w"]))) <= ALPHA * (1 + 1e-6)


@pytest.mark.parametrize(
    "tx",
    [
        adam_jax.adam(0.1),
        adam_jax.adamax(0.1),
        adam_jax.adam(0.1, amsgrad=True),
        adam_jax.adam(adam_jax.inverse_sqrt_schedule(0.3), b1_decay=1 - 1e-8),
    ],
    ids=["adam", "adamax", "amsgrad", "theorem-4.1"],
)
def test_converges_on_a_parabola(tx):
    target = jnp.array([3.0, -2.0, 0.5])
    scales = jnp.array([1.0, 10.0, 100.0])
    loss = lambda x: jnp.sum(scales * (x - target) ** 2)
    x = minimize(tx, loss, jnp.zeros(3), 2000)
    np.testing.assert_allclose(np.asarray(x), np.asarray(target), atol=1e-2)


@pytest.mark.parametrize("tx", [adam_jax.adam(2e-2), adam_jax.adamax(2e-2)], ids=["adam", "adamax"])
def test_converges_on_rosenbrock(tx):
    loss = lambda x: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
    x = minimize(tx, loss, jnp.array([-1.5, 2.0]), 20000)
    np.testing.assert_allclose(np.asarray(x), [1.0, 1.0], atol=1e-2)
