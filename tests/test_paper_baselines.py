"""The Section 6 baselines against NumPy loops written from their sources (Duchi et al. 2011,
Tieleman & Hinton 2012 with PyTorch's ε, Sutskever et al. 2013, Zeiler 2012), float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adam_jax.tools.paper import baselines, runner

LR = 0.05


def gradients(steps=6, shape=(3, 4), seed=0):
    rng = np.random.default_rng(seed)
    grads = [rng.normal(size=shape) * 10.0 ** rng.uniform(-6, 0, size=shape) for _ in range(steps)]
    grads[0][0, 0] = 0.0  # a coordinate whose first gradient is 0: AdaGrad's G_1 = 0 there
    return grads


def adagrad_ref(grads, lr, delta, schedule=False):
    big_g = np.zeros_like(grads[0])  # Duchi et al.: G_0 = 0
    out = []
    for t, g in enumerate(grads, start=1):
        big_g = big_g + g * g
        alpha = lr / np.sqrt(t) if schedule else lr
        out.append(-alpha * g / (delta + np.sqrt(big_g)))
    return out


def rmsprop_ref(grads, lr, rho, eps, inside):
    v = np.zeros_like(grads[0])
    out = []
    for g in grads:
        v = rho * v + (1 - rho) * g * g
        out.append(-lr * g / (np.sqrt(v + eps) if inside else np.sqrt(v) + eps))
    return out


def nesterov_ref(grads, lr, mu):
    b = np.zeros_like(grads[0])
    out = []
    for g in grads:
        b = mu * b + g
        out.append(-lr * (g + mu * b))
    return out


def adadelta_ref(grads, lr, rho, eps):
    eg, ex = np.zeros_like(grads[0]), np.zeros_like(grads[0])
    out = []
    for g in grads:
        eg = rho * eg + (1 - rho) * g * g
        dx = -np.sqrt(ex + eps) / np.sqrt(eg + eps) * g
        ex = rho * ex + (1 - rho) * dx * dx
        out.append(lr * dx)
    return out


def run(tx, grads):
    with jax.enable_x64(True):
        params = jnp.zeros(grads[0].shape, jnp.float64)
        state = tx.init(params)
        out = []
        for g in grads:
            updates, state = tx.update(jnp.asarray(g), state, params)
            out.append(np.asarray(updates))
        return out


@pytest.mark.parametrize(
    "name, schedule, reference",
    [
        ("adagrad", False, lambda g: adagrad_ref(g, LR, 1e-10)),
        ("adagrad_inv_sqrt", True, lambda g: adagrad_ref(g, LR, 1e-10, schedule=True)),
        ("rmsprop", False, lambda g: rmsprop_ref(g, LR, 0.9, 1e-8, inside=False)),
        ("rmsprop_eps_in_sqrt", False, lambda g: rmsprop_ref(g, LR, 0.9, 1e-8, inside=True)),
        ("sgd_nesterov", False, lambda g: nesterov_ref(g, LR, 0.9)),
        ("adadelta", False, lambda g: adadelta_ref(g, LR, 0.95, 1e-6)),
    ],
)
def test_baseline_updates_match_their_sources(name, schedule, reference):
    grads = gradients()
    with jax.enable_x64(True):
        tx = runner.make_optimizer(name, schedule)({"lr": jnp.float64(LR)})
    for got, want in zip(run(tx, grads), reference(grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)


def test_adagrad_starts_from_zero_not_optaxs_point_one():
    # one step of size alpha per coordinate whatever the gradient's scale (G_1 = g_1^2): optax's
    # default accumulator (0.1) would give alpha * g / sqrt(0.1 + g^2), about 3.2 alpha * g here
    grads = [np.full((2,), 1e-3)]
    np.testing.assert_allclose(run(baselines.adagrad(1.0), grads)[0], -1.0, rtol=1e-6)
    optax_step = run(optax.adagrad(1.0), grads)[0]
    np.testing.assert_allclose(optax_step, -1e-3 / np.sqrt(0.1 + 1e-6), rtol=1e-5)


def test_rmsprop_readings_differ_where_eps_matters():
    # tiny gradients: eps outside the root barely changes g/|g|-sized steps, eps inside the root
    # (1e-8 against v ~ 1e-13) shrinks them by far
    grads = [np.full((1,), 1e-6)]
    outside = run(baselines.rmsprop(1.0), grads)[0]
    inside = run(baselines.rmsprop_eps_in_sqrt(1.0), grads)[0]
    assert abs(outside[0]) > 100 * abs(inside[0])
