"""The models of Section 6, in plain JAX: parameters are dicts of arrays, losses are pure functions.

Every model is a :class:`Model`: ``init(key)`` gives the parameters (the same initialisation is used
for every optimizer), ``loss(params, x, y, key, train)`` gives the mean training cost of a minibatch.
``train=True`` applies dropout (and the VAE's sampling); ``train=False`` is the deterministic cost
the figures plot (the VAE still samples, with the fixed key the caller passes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Model:
    """A named model: ``init(key) -> params`` and ``loss(params, x, y, key, train) -> scalar``."""

    name: str
    init: Callable[[jax.Array], Params]
    loss: Callable[[Params, jax.Array, jax.Array, jax.Array, bool], jax.Array]
    # The rate of the model's only randomness in training, dropout on its inputs: then
    # loss(p, x, y, key, True) == loss(p, apply_dropout(dropout_mask(key, rate, x.shape), x, rate),
    # y, key, False), and the trainer may draw the masks once for many runs (train.DropoutMasks).
    input_dropout: float = 0.0


def _dense_init(key: jax.Array, fan_in: int, fan_out: int, gain: float = 2.0) -> jax.Array:
    """He-style normal initialisation, std = sqrt(gain / fan_in)."""
    return jax.random.normal(key, (fan_in, fan_out)) * jnp.sqrt(gain / fan_in)


def _threefry2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array, x1: jax.Array):
    """Threefry-2x32 with 20 rounds (Salmon et al., 2011), as ``jax.random`` computes it, unrolled."""
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in rotations[i % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def _unrolled_bernoulli(key: jax.Array, p: float, shape: tuple[int, ...]) -> jax.Array:
    """``jax.random.bernoulli(key, p, shape)`` for a raw threefry key under the partitionable
    scheme: the bits of element i are the two words of threefry(key, (0, i)) xor-ed; the uniform
    is those bits' top 23 as the mantissa of a float in [1, 2), minus 1."""
    x0 = jnp.zeros(shape, jnp.uint32)
    x1 = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    b0, b1 = _threefry2x32(key[0], key[1], x0, x1)
    mantissa = ((b0 ^ b1) >> np.uint32(9)) | np.uint32(0x3F800000)
    uniform = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - jnp.float32(1.0)
    return uniform < jnp.float32(p)


def dropout_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """The entries dropout keeps: ``jax.random.bernoulli(key, 1 - rate, shape)``, bit for bit.

    For a raw threefry key (``jax.random.PRNGKey``, the default implementation, partitionable)
    the hash is written out unrolled here: XLA:CPU runs ``jax.random``'s threefry as a rolled
    loop, several times slower on a 128 x 10,000 minibatch: most of an iteration of the
    bag-of-words logistic regression.
    ``tests/test_paper_dropout_masks.py`` checks the bits against ``jax.random.bernoulli``."""
    if (
        jax.config.jax_default_prng_impl != "threefry2x32"
        or not jax.config.jax_threefry_partitionable
        or jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        or math.prod(shape) >= 2**32
    ):
        return jax.random.bernoulli(key, 1.0 - rate, shape)
    return _unrolled_bernoulli(key, 1.0 - rate, shape)


def apply_dropout(keep: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout with mask ``keep``: zero the rest of ``x``, rescale the kept by 1/(1-rate)."""
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def dropout(key: jax.Array, x: jax.Array, rate: float, train: bool) -> jax.Array:
    """Inverted dropout: zero a fraction ``rate`` of ``x`` and rescale the rest by 1/(1-rate)."""
    if not train or rate == 0.0:
        return x
    return apply_dropout(dropout_mask(key, rate, x.shape), x, rate)


def _l2(params: Params, weight_decay: float) -> jax.Array:
    """weight_decay/2 * sum of squared weights (biases are not penalised)."""
    return 0.5 * weight_decay * sum(jnp.sum(v**2) for k, v in params.items() if k.startswith("w"))


def logistic_regression(
    num_features: int, num_classes: int, weight_decay: float = 1e-4, input_dropout: float = 0.0
) -> Model:
    """L2-regularised multiclass logistic regression (Section 6.1), softmax cross-entropy.

    With ``num_classes=2`` it is the binary bag-of-words model; ``input_dropout`` drops inputs
    during training (50% in the IMDB experiment).
    """

    def init(key: jax.Array) -> Params:
        return {
            "w": 0.01 * jax.random.normal(key, (num_features, num_classes)),
            "b": jnp.zeros(num_classes),
        }

    def loss(params: Params, x: jax.Array, y: jax.Array, key: jax.Array, train: bool) -> jax.Array:
        x = dropout(key, x.astype(jnp.float32), input_dropout, train)
        logits = x @ params["w"] + params["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + _l2(params, weight_decay)

    return Model("logreg", init, loss, input_dropout)


def mlp(
    num_features: int,
    num_classes: int,
    hidden: int = 1000,
    input_dropout: float = 0.2,
    hidden_dropout: float = 0.5,
) -> Model:
    """Two fully connected hidden layers of ``hidden`` ReLU units with dropout (Section 6.2)."""
    sizes = [num_features, hidden, hidden, num_classes]

    def init(key: jax.Array) -> Params:
        keys = jax.random.split(key, 3)
        params = {}
        for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
            params[f"w{i}"] = _dense_init(k, n_in, n_out, gain=2.0 if i < 2 else 1.0)
            params[f"b{i}"] = jnp.zeros(n_out)
        return params

    def loss(params: Params, x: jax.Array, y: jax.Array, key: jax.Array, train: bool) -> jax.Array:
        keys = jax.random.split(key, 3)
        h = dropout(keys[0], x, input_dropout, train)
        for i in range(2):
            h = jax.nn.relu(h @ params[f"w{i}"] + params[f"b{i}"])
            h = dropout(keys[i + 1], h, hidden_dropout, train)
        logits = h @ params["w2"] + params["b2"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return Model("mlp", init, loss)


def _conv(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """'SAME'-padded stride-1 convolution, NHWC input, HWIO kernel, computed as one matrix product.

    The padded input's ``kh * kw`` shifted windows are laid side by side along the channel axis
    (for each pixel: kernel row, kernel column, input channel, the order of the flattened HWIO
    kernel), then multiplied by the kernel. The result is the convolution. On XLA's CPU backend,
    inside the training loop's ``lax.scan``, a full-size Fig. 3 epoch runs several times faster
    this way than with ``lax.conv_general_dilated``, and faster than with
    ``conv_general_dilated_patches`` times the kernel (whose gradient is again a convolution):
    here the gradient of the windows is padding and adding.
    """
    kh, kw, c_in, c_out = w.shape
    _, height, width, _ = x.shape
    padded = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    windows = [padded[:, i : i + height, j : j + width, :] for i in range(kh) for j in range(kw)]
    return jnp.concatenate(windows, axis=-1) @ w.reshape(kh * kw * c_in, c_out) + b


def max_pool(x: jax.Array) -> jax.Array:
    """3x3 max-pooling with stride 2, 'SAME' padding (halves height and width, rounding up)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")


def cnn(
    image_shape: tuple[int, int, int],
    num_classes: int,
    channels: tuple[int, int, int] = (64, 64, 128),
    hidden: int = 1000,
    input_dropout: float = 0.2,
    hidden_dropout: float = 0.5,
) -> Model:
    """c64-c64-c128-1000 (Section 6.3): three stages of 5x5 conv + ReLU + 3x3/2 max-pool, a
    1000-unit ReLU layer with dropout, softmax output; dropout on the (whitened) input too."""
    c_in, height, width = image_shape
    for _ in range(3):
        height, width = -(-height // 2), -(-width // 2)
    flat = channels[-1] * height * width

    def init(key: jax.Array) -> Params:
        keys = jax.random.split(key, 5)
        params = {}
        prev = c_in
        for i, c in enumerate(channels):
            fan_in = prev * 25
            params[f"wc{i}"] = jax.random.normal(keys[i], (5, 5, prev, c)) * jnp.sqrt(2.0 / fan_in)
            params[f"bc{i}"] = jnp.zeros(c)
            prev = c
        params["wd"] = _dense_init(keys[3], flat, hidden)
        params["bd"] = jnp.zeros(hidden)
        params["wo"] = _dense_init(keys[4], hidden, num_classes, gain=1.0)
        params["bo"] = jnp.zeros(num_classes)
        return params

    def loss(params: Params, x: jax.Array, y: jax.Array, key: jax.Array, train: bool) -> jax.Array:
        k_in, k_hidden = jax.random.split(key)
        h = dropout(k_in, jnp.transpose(x, (0, 2, 3, 1)), input_dropout, train)  # NCHW -> NHWC
        for i in range(len(channels)):
            h = max_pool(jax.nn.relu(_conv(h, params[f"wc{i}"], params[f"bc{i}"])))
        h = jax.nn.relu(h.reshape(h.shape[0], -1) @ params["wd"] + params["bd"])
        h = dropout(k_hidden, h, hidden_dropout, train)
        logits = h @ params["wo"] + params["bo"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return Model("cnn", init, loss)


def vae(num_features: int, hidden: int = 500, latent: int = 50) -> Model:
    """Variational auto-encoder (Section 6.4): one hidden layer of 500 softplus units in encoder and
    decoder, a 50-dim Gaussian latent, Bernoulli likelihood on inputs in [0, 1].

    The loss is the negative ELBO per example: -E_q[log p(x|z)] + KL(q(z|x) || N(0, I)), with one
    reparameterised sample z = mu + sigma * noise. Labels are ignored.
    """

    def init(key: jax.Array) -> Params:
        k = jax.random.split(key, 4)
        return {
            "w_enc": _dense_init(k[0], num_features, hidden, gain=1.0),
            "b_enc": jnp.zeros(hidden),
            "w_lat": _dense_init(k[1], hidden, 2 * latent, gain=0.1),
            "b_lat": jnp.zeros(2 * latent),
            "w_dec": _dense_init(k[2], latent, hidden, gain=1.0),
            "b_dec": jnp.zeros(hidden),
            "w_out": _dense_init(k[3], hidden, num_features, gain=1.0),
            "b_out": jnp.zeros(num_features),
        }

    def loss(params: Params, x: jax.Array, y: jax.Array, key: jax.Array, train: bool) -> jax.Array:
        del y, train  # unsupervised; the sample is drawn with ``key`` in training and evaluation
        h = jax.nn.softplus(x @ params["w_enc"] + params["b_enc"])
        mu, log_var = jnp.split(h @ params["w_lat"] + params["b_lat"], 2, axis=-1)
        z = mu + jnp.exp(0.5 * log_var) * jax.random.normal(key, mu.shape)
        logits = jax.nn.softplus(z @ params["w_dec"] + params["b_dec"]) @ params["w_out"]
        logits = logits + params["b_out"]
        reconstruction = optax.sigmoid_binary_cross_entropy(logits, x).sum(-1)
        kl = 0.5 * jnp.sum(jnp.exp(log_var) + mu**2 - 1.0 - log_var, axis=-1)
        return jnp.mean(reconstruction + kl)

    return Model("vae", init, loss)
