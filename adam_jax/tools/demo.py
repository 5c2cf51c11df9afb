"""A short demonstration: logistic regression on two Gaussian blobs, trained with adam_jax.adam."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_jax

MAX_SEED = 2**32 - 1


def check_arguments(steps: object, seed: object) -> str | None:
    """The problem with ``steps`` and ``seed`` (naming the argument and what is allowed), or None."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        return f"--steps must be an integer >= 1, got {steps!r}"
    if (
        isinstance(seed, bool)
        or not isinstance(seed, (int, np.integer))
        or not 0 <= seed <= MAX_SEED
    ):
        return f"--seed must be an integer in [0, {MAX_SEED}], got {seed!r}"
    return None


def make_data(seed: int, n: int = 512, dim: int = 20) -> tuple[jax.Array, jax.Array]:
    """Two overlapping Gaussian classes in ``dim`` dimensions."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(size=(n, dim)) + (2 * y[:, None] - 1) * 0.5
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def run(steps: int = 300, seed: int = 0) -> float:
    """Train for ``steps`` full-batch Adam steps, print progress, return the final loss.

    Arguments are checked before any work: a bad one prints a message naming it and exits with
    code 2; Ctrl-C prints one line and exits with code 130 (no traceback either way).
    """
    problem = check_arguments(steps, seed)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    try:
        return _train(steps, seed)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def _train(steps: int, seed: int) -> float:
    x, y = make_data(seed)
    params = {"w": jnp.zeros(x.shape[1]), "b": jnp.zeros(())}

    def loss_fn(p: dict) -> jax.Array:
        logits = x @ p["w"] + p["b"]
        return optax.sigmoid_binary_cross_entropy(logits, y).mean()

    tx = adam_jax.adam(learning_rate=1e-2)
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    loss = loss_fn(params)
    print(f"adam_jax demo: logistic regression, {x.shape[0]} examples, {x.shape[1]} features")
    for i in range(1, steps + 1):
        params, state, loss = step(params, state)
        if i == 1 or i % max(1, steps // 6) == 0 or i == steps:
            print(f"  step {i:4d}  loss {float(loss):.4f}")
    final = float(loss_fn(params))
    print(f"final loss {final:.4f} (log 2 = 0.6931 at the start)")
    return final
