"""``adam-jax bench``: an Adam step against the memory-bandwidth floor, optax and torch.

Every contender is measured in the same process, interleaved round by round, and reported as the
median over rounds (warm-up and compilation excluded), so the ratios are comparable even on a
shared, noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_jax
from adam_jax.quantize import quantized_moments, state_bytes

CASES = {
    "one-array": lambda n: [(n,)],
    "many-leaves": lambda n: [(64, 64)] * max(1, n // 4096),
    "transformer": lambda n: _transformer_shapes(n),
}


def _transformer_shapes(n: int) -> list[tuple[int, ...]]:
    """Leaves of a small transformer: per block 4 attention matrices, 2 MLP matrices, norms, biases."""
    d = 256
    per_block = 12 * d * d + 9 * d
    blocks = max(1, n // per_block)
    shapes: list[tuple[int, ...]] = [(8192, d)]  # embedding
    for _ in range(blocks):
        shapes += [(d, d)] * 4 + [(d,)] * 4 + [(d, 4 * d), (4 * d,), (4 * d, d), (d,), (d,), (d,)]
    return shapes


@dataclass
class Row:
    case: str
    name: str
    ms_per_step: float
    gb_per_s: float
    vs_floor: float
    vs_optax: float
    compile_s: float
    state_bytes_per_param: float


def _params(shapes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {f"p{i:04d}": jnp.asarray(rng.normal(size=s), dtype) for i, s in enumerate(shapes)}


def _jax_contender(tx: optax.GradientTransformation, params, grads):
    """A jitted train step with donated params/state; returns (step, compile seconds, state bytes)."""

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
    compile_s = time.perf_counter() - start
    box = {"p": jax.tree.map(jnp.copy, params), "s": state}

    def run():
        box["p"], box["s"] = compiled(box["p"], box["s"], grads)
        jax.block_until_ready(box["p"])

    return run, compile_s, state_bytes(state)


def _floor_contender(params, grads):
    """The same bytes as an Adam step (read p, g, m, v; write p, m, v) over flat arrays, trivial math."""
    n = sum(x.size for x in jax.tree.leaves(params))
    dtype = jax.tree.leaves(params)[0].dtype
    flat = [jnp.ones(n, dtype) * i for i in range(4)]

    def step(p, m, v, g):
        return p - g * 1e-3, m + g, v + g

    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*flat).compile()
    compile_s = time.perf_counter() - start
    box = {"x": flat[:3]}

    def run():
        box["x"] = list(compiled(*box["x"], flat[3]))
        jax.block_until_ready(box["x"])

    return run, compile_s, 0  # the floor keeps no optimizer state


def _leaf_floor_contender(params, grads):
    """The floor's trivial math, but leaf by leaf over the parameter tree as an optimizer sees it.

    Its distance from the flat floor is the cost of the tree layout itself (one kernel per leaf
    and output on XLA:CPU), which no per-leaf optimizer can go below.
    """
    state = [jax.tree.map(jnp.zeros_like, params) for _ in range(2)]

    def step(p, m, v, g):
        return (
            jax.tree.map(lambda a, b: a - b * 1e-3, p, g),
            jax.tree.map(lambda a, b: a + b, m, g),
            jax.tree.map(lambda a, b: a + b, v, g),
        )

    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(params, *state, grads).compile()
    compile_s = time.perf_counter() - start
    box = {"x": [jax.tree.map(jnp.copy, params), *state]}

    def run():
        box["x"] = list(compiled(*box["x"], grads))
        jax.block_until_ready(box["x"])

    return run, compile_s, 0


def _torch_contender(params, grads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ps = [
        torch.tensor(np.asarray(x, np.float32), requires_grad=False)
        for x in jax.tree.leaves(params)
    ]
    gs = [torch.tensor(np.asarray(x, np.float32)) for x in jax.tree.leaves(grads)]
    for p, g in zip(ps, gs, strict=True):
        p.grad = g
    opt = torch.optim.Adam(ps, lr=1e-3, fused=True)
    start = time.perf_counter()
    opt.step()
    compile_s = time.perf_counter() - start

    def run():
        opt.step()

    state_bytes = sum(
        t.numel() * t.element_size()
        for st in opt.state.values()
        for t in st.values()
        if torch.is_tensor(t) and t.numel() > 1
    )
    return run, compile_s, state_bytes


def bench_case(case: str, n_params: int, dtype: str, rounds: int, inner: int) -> list[Row]:
    shapes = CASES[case](n_params)
    params = _params(shapes, dtype)
    grads = _params(shapes, dtype, seed=1)
    n = sum(x.size for x in jax.tree.leaves(params))
    itemsize = jnp.dtype(dtype).itemsize
    moved = n * itemsize * 7  # read p, g, m, v; write p, m, v

    contenders: dict[str, tuple[Callable[[], None], float, int]] = {
        "floor": _floor_contender(params, grads),
        "floor, leaf by leaf": _leaf_floor_contender(params, grads),
        "optax.adam": _jax_contender(optax.adam(1e-3), params, grads),
        "adam_jax.adam": _jax_contender(adam_jax.adam(1e-3), params, grads),
        "adam_jax.adam, bf16 moments": _jax_contender(
            adam_jax.adam(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16), params, grads
        ),
        "adam_jax.adam, 8-bit moments": _jax_contender(
            quantized_moments(adam_jax.adam(1e-3)), params, grads
        ),
    }
    torch_c = _torch_contender(params, grads) if dtype == "float32" else None
    if torch_c is not None:
        contenders["torch fused Adam"] = torch_c

    med = _interleaved_medians(contenders, rounds, inner)
    rows = []
    for name, (_, compile_s, n_state_bytes) in contenders.items():
        rows.append(
            Row(
                case=f"{case} ({len(shapes)} leaves, {n / 1e6:.1f}M)",
                name=name,
                ms_per_step=med[name] * 1e3,
                gb_per_s=moved / med[name] / 1e9,
                vs_floor=med[name] / med["floor"],
                vs_optax=med[name] / med["optax.adam"],
                compile_s=compile_s,
                state_bytes_per_param=n_state_bytes / n,
            )
        )
    return rows


def _interleaved_medians(contenders: dict, rounds: int, inner: int) -> dict[str, float]:
    """Seconds per step of each contender ``(run, ...)``: one warm-up call each, then ``rounds``
    rounds that time every contender in turn over ``inner`` calls; the median over rounds."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for run, *_ in contenders.values():  # warm-up
        run()
    for _ in range(rounds):
        for name, (run, *_) in contenders.items():
            start = time.perf_counter()
            for _ in range(inner):
                run()
            times[name].append((time.perf_counter() - start) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def format_table(rows: Sequence[Row]) -> str:
    head = "| case | contender | ms/step | GB/s | x floor | x optax | compile s | state B/param |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.name} | {r.ms_per_step:.2f} | {r.gb_per_s:.1f} | {r.vs_floor:.2f} | "
            f"{r.vs_optax:.2f} | {r.compile_s:.2f} | {r.state_bytes_per_param:.1f} |"
        )
    return "\n".join(lines)


# A GPT-2-small transformer block (d = 768): attention in/out, MLP in/out, layer norms, biases.
GPT2_BLOCK = [(768, 2304), (2304,), (768, 768), (768,), (768, 3072), (3072,), (3072, 768)] + [
    (768,)
] * 5


def bench_8bit(n_params: int, rounds: int, inner: int, leaves: int = 200) -> list[str]:
    """8-bit moments (``quantized_moments``) against float32 adam_jax, side by side.

    Step time at ``n_params`` in one flat array and at GPT-2-small block shapes (one block, 7.1M),
    interleaved round by round (median over rounds), and compile time of the jitted step at
    ``leaves`` leaves of the "transformer" case. Returns the lines of a table of ratios.
    """
    lines = [
        "| case | float32 ms | 8-bit ms | 8-bit / float32 | float32 B/param | 8-bit B/param |",
        "|---|---|---|---|---|---|",
    ]
    for case, shapes in [
        (f"{n_params / 2**20:.0f}M flat", [(n_params,)]),
        ("GPT-2 block", GPT2_BLOCK),
    ]:
        params = _params(shapes, "float32")
        grads = _params(shapes, "float32", seed=1)
        n = sum(x.size for x in jax.tree.leaves(params))
        contenders = {
            "f32": _jax_contender(adam_jax.adam(1e-3), params, grads),
            "8bit": _jax_contender(quantized_moments(adam_jax.adam(1e-3)), params, grads),
        }
        ms = {k: v * 1e3 for k, v in _interleaved_medians(contenders, rounds, inner).items()}
        lines.append(
            f"| {case} ({n / 1e6:.1f}M) | {ms['f32']:.2f} | {ms['8bit']:.2f} | "
            f"{ms['8bit'] / ms['f32']:.2f} | {contenders['f32'][2] / n:.2f} | "
            f"{contenders['8bit'][2] / n:.3f} |"
        )
        del contenders
    shapes = _transformer_shapes(16 * 2**20)[:leaves]
    params, grads = _params(shapes, "float32"), _params(shapes, "float32", seed=1)
    compile_s = {}
    for name, tx in [
        ("f32", adam_jax.adam(1e-3)),
        ("8bit", quantized_moments(adam_jax.adam(1e-3))),
    ]:
        compile_s[name] = _jax_contender(tx, params, grads)[1]
    lines.append(
        f"| compile, {len(shapes)} leaves (s) | {compile_s['f32']:.1f} | {compile_s['8bit']:.1f} | "
        f"{compile_s['8bit'] / compile_s['f32']:.2f} | | |"
    )
    return lines


def _at_least_one(text: str) -> int:
    """argparse type: an integer >= 1 (checked before any work starts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _writable_json(text: str) -> str:
    """argparse type: a file path whose folder exists and is writable (checked before timing)."""
    path = os.path.abspath(text)
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{text!r} is not writable")
    return path


def _write_json_atomically(path: str, rows: list[Row]) -> None:
    """The rows plus what produced them, written to a temporary file renamed into place."""
    import importlib.metadata as metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    record = {
        "device_kind": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "versions": {n: version(n) for n in ("adam-jax", "jax", "jaxlib", "optax", "torch")},
        "rows": [asdict(r) for r in rows],
    }
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", type=_at_least_one, default=16 * 2**20, help="parameters per case (>= 1)"
    )
    parser.add_argument(
        "--leaves", type=_at_least_one, default=None, help="leaves for the many-leaves case"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument(
        "--rounds", type=_at_least_one, default=15, help="interleaved rounds (median, >= 1)"
    )
    parser.add_argument("--inner", type=_at_least_one, default=5, help="steps per round (>= 1)")
    parser.add_argument(
        "--json",
        type=_writable_json,
        default=None,
        help="also write the rows, device kind and versions to this JSON file (atomically)",
    )
    parser.add_argument(
        "--8bit",
        dest="eight_bit",
        action="store_true",
        help="only compare 8-bit moments with float32: --params in one array (4M unless given), "
        "a GPT-2-small block, and compile time at --leaves leaves (default 200)",
    )


def main(args: argparse.Namespace) -> int:
    print(
        f"adam-jax bench on {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}"
    )
    if getattr(args, "eight_bit", False):
        n = args.params if args.params != 16 * 2**20 else 4 * 2**20
        print("\n".join(bench_8bit(n, args.rounds, args.inner, args.leaves or 200)), flush=True)
        return 0
    rows: list[Row] = []
    for case in args.cases:
        n = args.params
        if case == "many-leaves" and args.leaves is not None:
            n = args.leaves * 4096
        elif case == "many-leaves":
            n = 1000 * 4096
        rows += bench_case(case, n, args.dtype, args.rounds, args.inner)
        print(format_table([r for r in rows if r.case.startswith(case)]), flush=True)
    if args.json:
        _write_json_atomically(args.json, rows)
    return 0
