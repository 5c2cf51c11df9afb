"""Cost of adam_jax.monitor: monitored vs unmonitored Adam, measured in one run.

    python benchmarks/monitor_overhead.py [--repeats 30] [--batch 128]

Prints the median time of (a) a full training step of an MLP (forward, backward, Adam) and (b) the
optimizer update alone, with and without the monitor, and their ratios. The two variants are timed
interleaved, so load from other processes affects both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import adam_jax


def mlp_params(key: jax.Array, sizes: list[int]) -> list[dict[str, jax.Array]]:
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) / jnp.sqrt(a), "b": jnp.zeros(b)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def loss_fn(params, x, y):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    logits = x @ params[-1]["w"] + params[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_steps(tx):
    @jax.jit
    def train_step(params, state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    @jax.jit
    def update_only(grads, state, params):
        return tx.update(grads, state, params)

    return train_step, update_only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()

    sizes = [784, 1000, 1000, 10]  # the Section 6.2 network
    params = mlp_params(jax.random.PRNGKey(0), sizes)
    x = jax.random.normal(jax.random.PRNGKey(1), (args.batch, sizes[0]))
    y = jax.random.randint(jax.random.PRNGKey(2), (args.batch,), 0, 10)
    grads = jax.grad(loss_fn)(params, x, y)

    plain = adam_jax.adam(1e-3)
    hyper = dict(learning_rate=1e-3, b1=0.9, b2=0.999)
    variants = {
        "adam": plain,
        "monitor": adam_jax.monitor(plain, **hyper),
    }
    steps = {name: make_steps(tx) for name, tx in variants.items()}
    # Each variant trains its own copy (so the step count advances), and its update-only loop
    # carries its own optimizer state.
    train = {name: (params, tx.init(params)) for name, tx in variants.items()}
    update = {name: tx.init(params) for name, tx in variants.items()}
    times: dict[tuple[str, str], list[float]] = {}

    def one_round(record: bool) -> None:
        for name, (train_step, update_only) in steps.items():
            start = time.perf_counter()
            train[name] = jax.block_until_ready(train_step(*train[name], x, y))
            middle = time.perf_counter()
            _, update[name] = jax.block_until_ready(update_only(grads, update[name], params))
            end = time.perf_counter()
            if record:
                times.setdefault((name, "train step"), []).append(middle - start)
                times.setdefault((name, "update only"), []).append(end - middle)

    for _ in range(3):  # compile and warm up
        one_round(record=False)
    for _ in range(args.repeats):
        one_round(record=True)

    n = sum(p.size for p in jax.tree.leaves(params))
    print(f"MLP {sizes}, {n:,} parameters, batch {args.batch}, {jax.devices()[0].platform}")
    print(f"{'variant':<18} {'what':<12} {'median (ms)':>11} {'ratio to adam':>14}")
    for what in ("train step", "update only"):
        base = statistics.median(times[("adam", what)])
        for name in variants:
            median = statistics.median(times[(name, what)])
            print(f"{name:<18} {what:<12} {median * 1e3:>11.3f} {median / base:>14.3f}")


if __name__ == "__main__":
    main()
