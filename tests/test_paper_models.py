"""The Section 6 models: gradients against central finite differences (float64), and losses against
hand-computed / NumPy values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adam_jax.tools.paper import models


def finite_difference_check(model, x, y, train, seed=0):
    """Directional derivative of the loss along random directions: autodiff vs central differences."""
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(seed)
        rng = np.random.default_rng(seed)
        h = 1e-5
        # nonzero biases: keep ReLU inputs off the kink at exactly 0 (a unit whose inputs are all
        # dropped would otherwise sit there, where finite differences are one-sided)
        params = jax.tree.map(
            lambda a: jnp.asarray(a, jnp.float64) + 0.1 * rng.normal(size=a.shape), model.init(key)
        )
        x = jnp.asarray(x, jnp.float64)
        k_loss = jax.random.PRNGKey(seed + 1)  # fixes the dropout masks / VAE noise

        # jitted: one compile each for the loss and its gradient (eagerly, every operation of the
        # CNN compiled on its own, in float64, for 7 evaluations); the same loss and gradient
        f = jax.jit(lambda p: model.loss(p, x, y, k_loss, train))
        grads = jax.jit(jax.grad(f))(params)
        for _ in range(3):
            direction = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
            plus = f(jax.tree.map(lambda p, d: p + h * d, params, direction))
            minus = f(jax.tree.map(lambda p, d: p - h * d, params, direction))
            numeric = (plus - minus) / (2 * h)
            analytic = sum(
                jnp.vdot(g, d)
                for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
            )
            np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6, atol=1e-8)


RNG = np.random.default_rng(0)
X_FLAT = RNG.uniform(size=(6, 12))
X_IMG = RNG.normal(size=(4, 1, 8, 8))
Y = np.array([0, 1, 2, 1, 0, 2])


@pytest.mark.parametrize("train", [False, True])
def test_logistic_regression_gradient(train):
    model = models.logistic_regression(12, 3, weight_decay=0.1, input_dropout=0.5)
    finite_difference_check(model, X_FLAT, Y, train)


@pytest.mark.parametrize("train", [False, True])
def test_mlp_gradient(train):
    model = models.mlp(12, 3, hidden=7)
    finite_difference_check(model, X_FLAT, Y, train)


@pytest.mark.parametrize("train", [False, True])
def test_cnn_gradient(train):
    model = models.cnn((1, 8, 8), 3, channels=(3, 4, 5), hidden=6)
    finite_difference_check(model, X_IMG, Y[:4], train)


def test_vae_gradient():
    finite_difference_check(models.vae(12, hidden=5, latent=3), X_FLAT, Y, True)


def test_logistic_regression_loss_by_hand():
    model = models.logistic_regression(12, 3, weight_decay=0.5)
    w = RNG.normal(size=(12, 3))
    b = np.array([0.1, -0.2, 0.3])
    loss = model.loss(
        {"w": jnp.asarray(w), "b": jnp.asarray(b)},
        jnp.asarray(X_FLAT),
        Y,
        jax.random.PRNGKey(0),
        False,
    )
    z = X_FLAT @ w + b
    ce = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(6), Y])
    np.testing.assert_allclose(float(loss), ce + 0.25 * np.sum(w**2), rtol=1e-5)


def test_vae_loss_matches_numpy():
    model = models.vae(12, hidden=5, latent=3)
    p = jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(2)))
    key = jax.random.PRNGKey(5)
    loss = model.loss(p, jnp.asarray(X_FLAT, jnp.float32), Y, key, True)
    noise = np.asarray(jax.random.normal(key, (6, 3)))
    softplus = lambda a: np.log1p(np.exp(a))
    h = softplus(X_FLAT @ p["w_enc"] + p["b_enc"])
    out = h @ p["w_lat"] + p["b_lat"]
    mu, log_var = out[:, :3], out[:, 3:]
    z = mu + np.exp(0.5 * log_var) * noise
    logits = softplus(z @ p["w_dec"] + p["b_dec"]) @ p["w_out"] + p["b_out"]
    prob = 1 / (1 + np.exp(-logits))
    rec = -np.sum(X_FLAT * np.log(prob) + (1 - X_FLAT) * np.log(1 - prob), axis=1)
    kl = 0.5 * np.sum(np.exp(log_var) + mu**2 - 1 - log_var, axis=1)
    np.testing.assert_allclose(float(loss), np.mean(rec + kl), rtol=1e-4)


def test_conv_matches_a_direct_numpy_convolution():
    """'SAME' 5x5 convolution, odd and even sizes, several channels: against four nested sums."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 6, 5, 3))
    w = rng.normal(size=(5, 5, 3, 4))
    b = rng.normal(size=4)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    expected = np.zeros((2, 6, 5, 4))
    for i in range(6):
        for j in range(5):
            window = padded[:, i : i + 5, j : j + 5, :]  # (batch, 5, 5, c_in)
            expected[:, i, j, :] = np.einsum("nhwc,hwco->no", window, w) + b
    with jax.enable_x64(True):
        got = models._conv(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12, atol=1e-12)


def test_max_pool_and_cnn_shapes():
    x = jnp.arange(25.0).reshape(1, 5, 5, 1)
    pooled = models.max_pool(x)[0, :, :, 0]
    # 3x3 windows centred on rows/cols 0, 2, 4 (SAME padding): the max is the bottom-right entry
    np.testing.assert_array_equal(pooled, [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    model = models.cnn((3, 32, 32), 10)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))  # the shapes, nothing computed
    assert params["wc0"].shape == (5, 5, 3, 64) and params["wc2"].shape == (5, 5, 64, 128)
    assert params["wd"].shape == (128 * 4 * 4, 1000)  # 32 -> 16 -> 8 -> 4


def test_dropout_scales_kept_units():
    out = models.dropout(jax.random.PRNGKey(0), jnp.ones(10_000), 0.5, True)
    assert set(np.unique(np.asarray(out)).tolist()) == {0.0, 2.0}
    assert abs(float(out.mean()) - 1.0) < 0.05
    np.testing.assert_array_equal(
        models.dropout(jax.random.PRNGKey(0), jnp.ones(3), 0.5, False), 1.0
    )


def dead_taps(image_shape, x):
    """Per convolution, the number of its 5x5 taps whose weights get no gradient on ``x``."""
    model = models.cnn(image_shape, 10, channels=(4, 4, 8), hidden=16)
    # eagerly: its random draws compile faster one by one than as one jitted init (33 s against
    # 46 s for this test on a loaded 2-core machine)
    params = model.init(jax.random.PRNGKey(0))
    loss = jax.jit(jax.grad(model.loss), static_argnums=4)
    grads = loss(params, jnp.asarray(x), jnp.arange(len(x)) % 10, jax.random.PRNGKey(1), False)
    return [int(jnp.sum(jnp.abs(grads[f"wc{i}"]).sum((2, 3)) == 0)) for i in range(3)]


def test_every_convolution_tap_gets_gradient_on_the_full_runs_images():
    from adam_jax.tools.paper import data

    ds = data.coloured_digits()
    assert ds.x.shape[1:] == (3, 32, 32)
    assert dead_taps((3, 32, 32), ds.x[:4]) == [0, 0, 0]
    # the 8x8 digits of the quick run: the third convolution sees a 2x2 map, 16 taps are dead
    assert dead_taps((1, 8, 8), data.digits_as_cifar().x[:4]) == [0, 0, 16]
