"""``adam-jax bench --partition``: optimizer state split over the data axis against replicated.

Data parallelism on 8 devices (on a CPU: ``--xla_force_host_platform_device_count=8`` virtual
ones, set up in a fresh process when this one has fewer): the batch is split over ``data``, the
parameters are replicated, and a jitted train step computes the gradients and the Adam update.
Three contenders per case, compiled first, then timed interleaved round by round:

- ``replicated``: ``adam_jax.adam``, its state laid out like the parameters (all of it on every
  device);
- ``partitioned``: ``adam_jax.partitioned(adam_jax.adam, params)``, the state split over ``data``;
- ``partitioned, flat_moments``: the same around ``adam_jax.flat_moments``: the small leaves'
  state in one flat buffer, split over ``data`` (one collective for many leaves).

Per contender: the state bytes device 0 holds (read from the arrays' addressable shards), the
median step time and the median of the per-round ratios to ``replicated``, the compile time, and
the collectives of the compiled step (all-reduce, reduce-scatter, all-gather: operations in the
optimized HLO, combined ones counted once).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

DEVICES = 8
COLLECTIVES = ("all-reduce", "reduce-scatter", "all-gather")
LR = 1e-3


def _gpt2_block_params(rng) -> dict[str, Any]:
    """The leaves of one GPT-2-small transformer block (d = 768), 7.1M parameters."""
    d = 768
    shapes = {
        "ln1_scale": (d,),
        "ln1_bias": (d,),
        "qkv": (d, 3 * d),
        "qkv_bias": (3 * d,),
        "proj": (d, d),
        "proj_bias": (d,),
        "ln2_scale": (d,),
        "ln2_bias": (d,),
        "fc": (d, 4 * d),
        "fc_bias": (4 * d,),
        "out": (4 * d, d),
        "out_bias": (d,),
    }
    return {k: rng.normal(size=s).astype("float32") / math.sqrt(s[0]) for k, s in shapes.items()}


def _gpt2_block_loss(p, x):
    """mean(block(x)^2) of a pre-norm GPT-2 block with causal attention over 12 heads."""
    import jax
    import jax.numpy as jnp

    def norm(h, scale, bias):
        mu = h.mean(-1, keepdims=True)
        return (h - mu) * jax.lax.rsqrt(h.var(-1, keepdims=True) + 1e-5) * scale + bias

    b, t, d = x.shape
    heads = 12
    q, k, v = jnp.split(norm(x, p["ln1_scale"], p["ln1_bias"]) @ p["qkv"] + p["qkv_bias"], 3, -1)
    q, k, v = (a.reshape(b, t, heads, d // heads) for a in (q, k, v))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // heads)
    logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -1e9)
    a = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v).reshape(b, t, d)
    x = x + a @ p["proj"] + p["proj_bias"]
    h = jax.nn.gelu(norm(x, p["ln2_scale"], p["ln2_bias"]) @ p["fc"] + p["fc_bias"])
    return jnp.mean((x + h @ p["out"] + p["out_bias"]) ** 2)


def _many_leaves_params(rng, leaves: int) -> dict[str, Any]:
    return {f"w{i:04d}": rng.normal(size=(32, 32)).astype("float32") / 32 for i in range(leaves)}


def _residual_tanh_loss(p, x):
    """One small residual layer per leaf: h <- h + 0.1 tanh(h W); loss mean(h^2)."""
    import jax.numpy as jnp

    h = x
    for w in p.values():
        h = h + 0.1 * jnp.tanh(h @ w)
    return jnp.mean(h**2)


@dataclass
class Row:
    case: str
    contender: str
    state_bytes_total: int  # the state's logical size
    state_bytes_device0: int  # held by device 0 (its addressable shards)
    ms_per_step: float  # median over rounds
    vs_replicated: float  # median over rounds of the per-round ratio
    compile_s: float
    collectives: dict[str, int]


def _count(hlo: str, op: str) -> int:
    """Operations ``op`` (and their async ``-start`` halves) in optimized HLO text: the opcode
    follows a space, a reference to the result (``%all-reduce.2``) a ``%``."""
    return len(re.findall(rf" {op}(?:-start)?\(", hlo))


def _device0_bytes(tree) -> int:
    import jax

    device = jax.devices()[0]
    return sum(
        s.data.nbytes
        for x in jax.tree.leaves(tree)
        for s in x.addressable_shards
        if s.device == device
    )


CONTENDERS = ("replicated", "partitioned", "partitioned, flat_moments")


def _make_tx(contender: str, params):
    import adam_jax

    if contender == "replicated":
        return adam_jax.adam(LR)
    if contender == "partitioned":
        return adam_jax.partitioned(adam_jax.adam(LR), params)
    return adam_jax.partitioned(adam_jax.flat_moments(adam_jax.adam(LR)), params)


def bench_case(
    name: str, params_host, loss, batch_host, rounds: int, inner: int, contenders=CONTENDERS
) -> list[Row]:
    import jax
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from adam_jax.tools.bench import _interleaved_times, _paired

    mesh = jax.make_mesh((DEVICES,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    params = jax.device_put(params_host, NamedSharding(mesh, P()))
    batch = jax.device_put(batch_host, NamedSharding(mesh, P("data")))
    compiled_steps, facts = {}, {}
    for contender in contenders:
        tx = _make_tx(contender, params)

        def step(p, s, x, tx=tx):
            u, s = tx.update(jax.grad(loss)(p, x), s, p)
            return optax.apply_updates(p, u), s

        state = tx.init(params)
        start = time.perf_counter()
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, batch).compile()
        compile_s = time.perf_counter() - start
        hlo = compiled.as_text()
        facts[contender] = (
            sum(x.nbytes for x in jax.tree.leaves(state)),
            _device0_bytes(state),
            compile_s,
            {op: _count(hlo, op) for op in COLLECTIVES},
        )
        box = {"p": jax.tree.map(lambda x: x.copy(), params), "s": state}

        def run(box=box, compiled=compiled):
            box["p"], box["s"] = compiled(box["p"], box["s"], batch)
            jax.block_until_ready(box["p"])

        compiled_steps[contender] = type("C", (), {"run": staticmethod(run)})()
    times = _interleaved_times(compiled_steps, rounds, inner)
    rows = []
    for contender in contenders:
        total, dev0, compile_s, collectives = facts[contender]
        rows.append(
            Row(
                case=name,
                contender=contender,
                state_bytes_total=total,
                state_bytes_device0=dev0,
                ms_per_step=statistics.median(times[contender]) * 1e3,
                vs_replicated=_paired(times, contender, "replicated", lambda a, b: a / b),
                compile_s=compile_s,
                collectives=collectives,
            )
        )
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [
        "| case | state | state MB (all) | state MB on device 0 | x replicated | ms/step | "
        "x replicated | compile s | all-reduce | reduce-scatter | all-gather |",
        "|" + "---|" * 11,
    ]
    replicated = {r.case: r for r in rows if r.contender == "replicated"}
    for r in rows:
        ref = replicated[r.case]
        c = r.collectives
        lines.append(
            f"| {r.case} | {r.contender} | {r.state_bytes_total / 1e6:.2f} | "
            f"{r.state_bytes_device0 / 1e6:.3f} | "
            f"{r.state_bytes_device0 / ref.state_bytes_device0:.3f} | {r.ms_per_step:.2f} | "
            f"{r.vs_replicated:.2f} | {r.compile_s:.1f} | {c['all-reduce']} | "
            f"{c['reduce-scatter']} | {c['all-gather']} |"
        )
    return "\n".join(lines)


def run(rounds: int, inner: int, leaves: int, batch: int, seq: int) -> tuple[list[Row], dict]:
    """Both cases; the rows and what they ran on (device, versions)."""
    import jax
    import numpy as np
    import optax

    rng = np.random.default_rng(0)
    rows = bench_case(
        "GPT-2 block (12 leaves, 7.1M)",
        _gpt2_block_params(rng),
        _gpt2_block_loss,
        rng.normal(size=(batch, seq, 768)).astype("float32"),
        rounds,
        inner,
    )
    rows += bench_case(
        f"{leaves} leaves of 32x32 ({leaves * 1024 / 1e6:.1f}M)",
        _many_leaves_params(rng, leaves),
        _residual_tanh_loss,
        rng.normal(size=(4 * DEVICES, 32)).astype("float32"),
        rounds,
        inner,
    )
    import adam_jax

    about = {
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "jax": jax.__version__,
        "optax": optax.__version__,
        "adam_jax": adam_jax.__version__,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rounds": rounds,
        "inner": inner,
        "batch": [batch, seq],
    }
    return rows, about


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--inner", type=int, default=3, help="steps per round (default 3)")
    parser.add_argument(
        "--leaves", type=int, default=1000, help="leaves of the many-leaves case (default 1000)"
    )
    parser.add_argument("--batch", type=int, default=8, help="GPT-2 block batch (default 8)")
    parser.add_argument("--seq", type=int, default=8, help="GPT-2 block sequence (default 8)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")


def argv_of(args: argparse.Namespace) -> list[str]:
    """The command line of this module for ``adam-jax bench --partition``'s arguments."""
    argv = []
    for name in ("rounds", "inner", "leaves", "json"):
        value = getattr(args, name, None)
        if value is not None:
            argv += [f"--{name}", str(value)]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adam-jax bench --partition", description=__doc__)
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    import jax

    if jax.device_count() < DEVICES and jax.default_backend() == "cpu":
        # XLA reads the virtual device count once, at start: run in a fresh process.
        env = dict(os.environ)
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
        ).strip()
        cmd = [sys.executable, "-m", "adam_jax.tools.bench_partition", *argv]
        return subprocess.call(cmd, env=env)
    if jax.device_count() < DEVICES:
        print(
            f"error: --partition needs {DEVICES} devices, found {jax.device_count()}",
            file=sys.stderr,
        )
        return 2
    rows, about = run(args.rounds, args.inner, args.leaves, args.batch, args.seq)
    print(f"# adam-jax bench --partition: {about['devices']}, jax {about['jax']}, {about['date']}")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"about": about, "rows": [asdict(r) for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
