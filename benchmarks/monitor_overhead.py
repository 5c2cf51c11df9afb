"""Cost of adam_jax.monitor: monitored vs unmonitored Adam, measured in one run.

    python benchmarks/monitor_overhead.py [--rounds 60] [--batch 128] [--every 1 10 100]

Times (a) a full jitted training step of the Section 6.2 MLP (784-1000-1000-10, forward, backward,
Adam, apply) and (b) the optimizer update alone, for ``adam_jax.adam(1e-3)`` and for
``adam_jax.monitor(adam_jax.adam(1e-3))`` with its default cadence, and
``adam_jax.monitor(adam_jax.adam(1e-3), every=k)`` for each ``k``. All variants are timed
interleaved, one step each per round, so load from other processes affects them alike. Printed:
the median time, and the median and quartiles over rounds of each variant's time divided by the
unmonitored time of the same round, with the load average before and after. The first line
also says when it ran and with which versions (results/monitor/ keeps the output).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import jax
import jax.numpy as jnp
import jaxlib
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
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 10, 100])
    args = parser.parse_args()

    sizes = [784, 1000, 1000, 10]  # the Section 6.2 network
    params = mlp_params(jax.random.PRNGKey(0), sizes)
    x = jax.random.normal(jax.random.PRNGKey(1), (args.batch, sizes[0]))
    y = jax.random.randint(jax.random.PRNGKey(2), (args.batch,), 0, 10)
    grads = jax.grad(loss_fn)(params, x, y)

    plain = adam_jax.adam(1e-3)
    variants = {"adam": plain, "monitor (default)": adam_jax.monitor(plain)}
    for k in args.every:
        variants[f"monitor every={k}"] = adam_jax.monitor(plain, every=k)  # nothing else needed
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

    load_before = os.getloadavg()[0]
    for _ in range(3):  # compile and warm up
        one_round(record=False)
    for _ in range(args.rounds):
        one_round(record=True)
    load_after = os.getloadavg()[0]

    n = sum(p.size for p in jax.tree.leaves(params))
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    print(
        f"{when}, adam_jax {adam_jax.__version__}, jax {jax.__version__}, "
        f"jaxlib {jaxlib.__version__}, optax {optax.__version__}: ",
        end="",
    )
    print(
        f"MLP {sizes}, {n:,} parameters, batch {args.batch}, {jax.devices()[0].platform}, ", end=""
    )
    print(f"{args.rounds} rounds, load average {load_before:.1f} before, {load_after:.1f} after")
    print(
        f"{'variant':<19} {'what':<12} {'median (ms)':>11} {'ratio: median':>14} {'[q25, q75]':>16}"
    )
    for what in ("train step", "update only"):
        base = times[("adam", what)]
        for name in variants:
            own = times[(name, what)]
            ratios = sorted(a / b for a, b in zip(own, base, strict=True))
            q25, q75 = (ratios[int(q * (len(ratios) - 1))] for q in (0.25, 0.75))
            print(
                f"{name:<19} {what:<12} {statistics.median(own) * 1e3:>11.3f} "
                f"{statistics.median(ratios):>14.3f} {f'[{q25:.3f}, {q75:.3f}]':>16}"
            )


if __name__ == "__main__":
    main()
