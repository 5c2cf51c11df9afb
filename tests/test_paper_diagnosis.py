"""Section 6.3's diagnosis: the denominators' root terms and ε's share, against hand computation."""

import jax.numpy as jnp
import numpy as np
import optax

from adam_jax.tools.paper import diagnosis, runner


def states(name, grads):
    tx = runner.make_optimizer(name, False)({"lr": jnp.float32(0.1)})
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
    return state


GRADS = [np.array([1e-3, 1e-9, 0.0]), np.array([1e-3, 1e-9, 0.0])]


def test_adam_root_is_sqrt_v_hat_and_eps_share():
    v = 0.001 * (0.999 * GRADS[0] ** 2 + GRADS[1] ** 2)  # v_2 = b2 (1-b2) g1^2 + (1-b2) g2^2
    root = np.sqrt(v / (1 - 0.999**2))  # = |g| for a constant gradient
    np.testing.assert_allclose(root, [1e-3, 1e-9, 0.0], rtol=1e-5)
    got = diagnosis.denominator_stats("adam", states("adam", GRADS), 2)
    np.testing.assert_allclose(got["median_root"], 1e-9, rtol=1e-4)
    share = 1e-8 / (root + 1e-8)
    np.testing.assert_allclose(got["eps_share"], share.mean(), rtol=1e-4)
    assert got["eps_dominates"] == 2 / 3  # eps > 1e-9 and eps > 0


def test_adagrad_root_is_sqrt_of_the_sum_and_its_mean():
    got = diagnosis.denominator_stats("adagrad", states("adagrad", GRADS), 2)
    big_g = GRADS[0] ** 2 + GRADS[1] ** 2
    np.testing.assert_allclose(got["median_root"], np.median(np.sqrt(big_g)), rtol=1e-4)
    np.testing.assert_allclose(got["median_rms"], np.median(np.sqrt(big_g / 2)), rtol=1e-4)
    np.testing.assert_allclose(
        got["eps_share"], np.mean(1e-10 / (np.sqrt(big_g) + 1e-10)), rtol=1e-4
    )
    assert got["eps_dominates"] == 1 / 3  # only the coordinate whose gradient is 0


def test_selected_rates_come_from_the_selection_seeds():
    rows = [
        {"panel": "fig3", "stage": "selection", "selected": "1", "optimizer": "adam", "learning_rate": "0.003"},
        {"panel": "fig3", "stage": "selection", "selected": "0", "optimizer": "adam", "learning_rate": "0.01"},
        {"panel": "fig3", "stage": "verdict", "selected": "1", "optimizer": "adagrad", "learning_rate": "0.1"},
    ]  # fmt: skip
    assert diagnosis.selected_rates(rows) == {"adam": 0.003}
