"""``adam-jax bench``: Adam against the memory-traffic floor, optax and torch, side by side.

Two kinds of case. An *optimizer step* times ``tx.update`` plus ``optax.apply_updates`` with the
gradients passed in; its floor is a kernel moving the same bytes over one flat array with trivial
math. A *train step* computes the gradients inside the jitted step (``jax.grad`` of a loss) and
is compared with the same step under stateless SGD (``optax.sgd``): the difference is the
optimizer's overhead. Params and state are donated in every jitted step.

Every contender of a case is compiled first, then timed in the same process, interleaved round by
round (warm-up and compilation excluded). Step times are medians over rounds; ratios and overheads
are medians of the per-round ratios and differences, so a shared, noisy machine's drift between
rounds cancels.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import operator
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adam_jax
from adam_jax.quantize import quantized_moments, state_bytes

LR = 1e-3


# --- cases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """Parameter leaves of one benchmark case; ``model`` names the loss of a train step."""

    name: str
    shapes: tuple[tuple[int, ...], ...]
    model: str | None = None  # None: optimizer step, grads passed in

    @property
    def kind(self) -> str:
        return "optimizer step" if self.model is None else "train step"

    @property
    def label(self) -> str:
        n = sum(math.prod(s) for s in self.shapes)
        return f"{self.name} ({len(self.shapes)} leaves, {n / 1e6:.1f}M)"


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """The 148 leaves (124M parameters) of GPT-2 small: embeddings, 12 blocks, final norm."""
    d, blocks = 768, 12
    ln = [(d,), (d,)]  # scale, bias
    block = [
        *ln,
        (d, 3 * d), (3 * d,),  # attention c_attn
        (d, d), (d,),  # attention c_proj
        *ln,
        (d, 4 * d), (4 * d,),  # mlp c_fc
        (4 * d, d), (d,),  # mlp c_proj
    ]  # fmt: skip
    return [(50257, d), (1024, d), *block * blocks, *ln]


# Sizes of the default run (about 2 minutes on a 2-core CPU) and of --full (the sizes).
SIZES = {
    "default": {"params": 2**22, "leaves": 100},
    "full": {"params": 2**24, "leaves": 1000},
}
OPTIMIZER_CASES = ["one-array", "many-leaves", "gpt2-small"]
TRAIN_CASES = ["train-mlp", "train-many-leaves"]
DEFAULT_CASES = ["one-array", "many-leaves", "train-mlp", "train-many-leaves"]


def make_case(name: str, params: int, leaves: int) -> Case:
    """``params``: size of the one array; ``leaves``: leaves of the two many-leaf cases."""
    if name == "one-array":
        return Case(name, ((params,),))
    if name == "many-leaves":
        return Case(name, ((64, 64),) * leaves)
    if name == "gpt2-small":
        return Case(name, tuple(gpt2_small_shapes()))
    if name == "train-mlp":  # the paper's Section 6.2 MLP, 784-1000-1000-10
        return Case(name, ((784, 1000), (1000,), (1000, 1000), (1000,), (1000, 10), (10,)), "mlp")
    if name == "train-many-leaves":
        return Case(name, ((32, 32),) * leaves, "residual-tanh")
    raise ValueError(f"unknown case {name!r}")


def case_size(name: str, params: int, leaves: int) -> tuple[int, int]:
    """Parameters of ``make_case(name, params, leaves)`` and of its largest leaf, computed
    without building it (a tuple of 10**11 leaf shapes would not fit in memory either)."""
    per_leaf = {"many-leaves": 64 * 64, "train-many-leaves": 32 * 32}
    if name == "one-array":
        return params, params
    if name in per_leaf:
        return per_leaf[name] * leaves, per_leaf[name]
    sizes = [math.prod(s) for s in make_case(name, params, 1).shapes]
    return sum(sizes), max(sizes)


def bytes_needed(n: int, largest: int, dtype: str, arrays: int, state: Sequence[float]) -> int:
    """The memory a case holds at once, at least: ``arrays`` arrays of its ``n`` parameters
    (parameters, gradients, the floor's), every contender's copy of the parameters with its
    ``state`` bytes per parameter, and NumPy's float64 draw of the ``largest`` leaf. XLA's
    temporaries and torch's tensors are not counted."""
    size = jnp.dtype(dtype).itemsize
    return n * (arrays * size + sum(size + b for b in state)) + 8 * largest


def case_bytes(name: str, params: int, leaves: int, dtype: str, selected: Sequence[str]) -> int:
    """:func:`bytes_needed` by the contenders of case ``name`` (references and ``selected``)."""
    n, largest = case_size(name, params, leaves)
    size = jnp.dtype(dtype).itemsize
    moments = {"bf16": 2 * 2, "8bit": 2 * 1}  # bytes per parameter; the others: the params' dtype
    state = [2 * size]  # optax.adam
    state += [moments.get(k, 2 * size) for k in selected if k in JAX_CONTENDERS]
    if name in TRAIN_CASES:  # params and the batch; optax.sgd keeps no state
        return bytes_needed(n, largest, dtype, 1, [*state, 0])
    return bytes_needed(n, largest, dtype, 2 + 4, state)  # params, grads, the floor's four


def plan(args: argparse.Namespace) -> list[Case]:
    """The cases a command line selects: the default set, or every case at the sizes of --full."""
    sizes = SIZES["full" if args.full else "default"]
    names = args.cases or (OPTIMIZER_CASES + TRAIN_CASES if args.full else DEFAULT_CASES)
    return [
        make_case(n, args.params or sizes["params"], args.leaves or sizes["leaves"]) for n in names
    ]


def _params(shapes, dtype, seed=0):
    """Seeded normal leaves scaled by 1/sqrt(leading dimension), named in order."""
    rng = np.random.default_rng(seed)
    return {
        f"p{i:04d}": jnp.asarray(rng.normal(size=s) / math.sqrt(s[0]), dtype)
        for i, s in enumerate(shapes)
    }


def _mlp_loss(params, batch):
    """Softmax cross-entropy of a ReLU MLP whose leaves are (w, b) pairs in order."""
    x, labels = batch
    layers = list(params.values())
    h = x
    for i in range(0, len(layers), 2):
        h = h @ layers[i] + layers[i + 1]
        if i + 2 < len(layers):
            h = jax.nn.relu(h)
    return optax.softmax_cross_entropy_with_integer_labels(h, labels).mean()


def _residual_tanh_loss(params, x):
    """One small residual layer per leaf: h <- h + 0.1 tanh(h W); loss mean(h^2)."""
    h = x
    for w in params.values():
        h = h + 0.1 * jnp.tanh(h @ w)
    return jnp.mean(h**2)


def _batch(model: str, dtype):
    rng = np.random.default_rng(2)
    if model == "mlp":
        x = jnp.asarray(rng.normal(size=(128, 784)), dtype)
        return x, jnp.asarray(rng.integers(0, 10, size=128))
    return jnp.asarray(rng.normal(size=(32, 32)), dtype)


LOSSES = {"mlp": _mlp_loss, "residual-tanh": _residual_tanh_loss}


# --- contenders ------------------------------------------------------------------------------


@dataclass
class Contender:
    run: Callable[[], None]  # one step, finished (blocked on) before it returns
    compile_s: float | None  # lower + compile of the jitted step; None for eager torch
    state_bytes: int


def _jax_contender(tx: optax.GradientTransformation, params, data, loss=None) -> Contender:
    """A jitted step with donated params and state. ``data`` is the gradients of an optimizer
    step, or the batch of a train step whose gradients ``jax.grad(loss)`` computes inside."""

    def step(p, s, data):
        g = data if loss is None else jax.grad(loss)(p, data)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, data).compile()
    compile_s = time.perf_counter() - start
    box = {"p": jax.tree.map(jnp.copy, params), "s": state}

    def run():
        box["p"], box["s"] = compiled(box["p"], box["s"], data)
        jax.block_until_ready(box["p"])

    return Contender(run, compile_s, state_bytes(state))


def _floor_contender(params) -> Contender:
    """The bytes of an Adam step (read p, g, m, v; write p, m, v) over flat arrays, trivial math."""
    n = sum(x.size for x in jax.tree.leaves(params))
    dtype = jax.tree.leaves(params)[0].dtype
    flat = [jnp.ones(n, dtype) * i for i in range(4)]

    def step(p, m, v, g):
        return p - g * LR, m + g, v + g

    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*flat).compile()
    compile_s = time.perf_counter() - start
    box = {"x": flat[:3]}

    def run():
        box["x"] = list(compiled(*box["x"], flat[3]))
        jax.block_until_ready(box["x"])

    return Contender(run, compile_s, 0)  # the floor keeps no optimizer state


def _torch_contender(params, grads, impl: str, device: str) -> Contender:
    """torch.optim.Adam (``fused=True`` or ``foreach=True``) over the same leaves, eager."""
    import torch

    def tensor(x):
        return torch.tensor(np.asarray(x, np.float32), device=device).to(
            getattr(torch, x.dtype.name)
        )

    ps = [tensor(x) for x in jax.tree.leaves(params)]
    for p, g in zip(ps, jax.tree.leaves(grads), strict=True):
        p.grad = tensor(g)
    opt = torch.optim.Adam(ps, lr=LR, **{impl: True})

    def run():
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    run()  # creates the state
    n_bytes = sum(
        t.numel() * t.element_size()
        for st in opt.state.values()
        for t in st.values()
        if torch.is_tensor(t) and t.numel() > 1
    )
    return Contender(run, None, n_bytes)


def _torch():
    """The torch module, or None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_devices() -> list[str]:
    torch = _torch()
    if torch is None:
        return []
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


# Selectable contenders: the name in --contenders -> (row name, transformation). The floor (in
# optimizer steps), optax.adam and, in train steps, optax.sgd are always timed: ratios refer to them.
JAX_CONTENDERS: dict[str, tuple[str, Callable[[], optax.GradientTransformation]]] = {
    "optax-flatten": ("optax.flatten(optax.adam)", lambda: optax.flatten(optax.adam(LR))),
    "adam_jax": ("adam_jax.adam", lambda: adam_jax.adam(LR)),
    "flat": ("adam_jax.adam, flat moments", lambda: adam_jax.flat_moments(adam_jax.adam(LR))),
    "bf16": (
        "adam_jax.adam, bf16 moments",
        lambda: adam_jax.adam(LR, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
    ),
    "8bit": ("adam_jax.adam, 8-bit moments", lambda: quantized_moments(adam_jax.adam(LR))),
}
TORCH_CONTENDERS = {"torch-fused": "fused", "torch-foreach": "foreach"}
CONTENDERS = [*JAX_CONTENDERS, *TORCH_CONTENDERS]


def build_contenders(case: Case, dtype: str, selected: Sequence[str]) -> dict[str, Contender]:
    """Compile (or, for torch, warm up) every contender of ``case``, references first. A Ctrl-C
    recorded during an import or a compile stops it at the next contender, not after them all."""
    from adam_jax.tools.interrupt import check_interrupted

    params = _params(case.shapes, dtype)
    if case.model is None:
        data, loss = _params(case.shapes, dtype, seed=1), None
        contenders = {"floor": _floor_contender(params)}
    else:
        data, loss = _batch(case.model, dtype), LOSSES[case.model]
        contenders = {"optax.sgd": _jax_contender(optax.sgd(LR), params, data, loss)}
    contenders["optax.adam"] = _jax_contender(optax.adam(LR), params, data, loss)
    for key, (name, make_tx) in JAX_CONTENDERS.items():
        if key in selected:
            check_interrupted()
            contenders[name] = _jax_contender(make_tx(), params, data, loss)
    if case.model is None:  # torch runs the optimizer step only
        for device in _torch_devices():
            for key, impl in TORCH_CONTENDERS.items():
                if key in selected:
                    check_interrupted()
                    name = f"torch {impl} Adam ({device})"
                    contenders[name] = _torch_contender(params, data, impl, device)
    return contenders


# --- timing and results ----------------------------------------------------------------------


def _interleaved_times(contenders: dict, rounds: int, inner: int) -> dict[str, list[float]]:
    """Seconds per step of each ``Contender`` in each round: one warm-up call each, then
    ``rounds`` rounds that time every contender in turn over ``inner`` calls."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for c in contenders.values():  # warm-up
        c.run()
    from adam_jax.tools.interrupt import check_interrupted

    for _ in range(rounds):
        check_interrupted()  # a Ctrl-C whose exception a callback swallowed
        for name, c in contenders.items():
            start = time.perf_counter()
            for _ in range(inner):
                c.run()
            times[name].append((time.perf_counter() - start) / inner)
    return times


def _paired(times: dict[str, list[float]], name: str, ref: str, op) -> float:
    """The median over rounds of ``op(name's time, ref's time)`` in the same round: drift of a
    shared machine between rounds cancels."""
    return statistics.median(op(a, b) for a, b in zip(times[name], times[ref], strict=True))


@dataclass
class Row:
    case: str
    kind: str  # "optimizer step" or "train step"
    contender: str
    ms_per_step: float
    vs_optax: float  # step time / optax.adam's (median over rounds)
    vs_floor: float | None  # optimizer steps: step time / the floor's (median over rounds)
    overhead_ms: float | None  # train steps: step time - optax.sgd's (median over rounds)
    overhead_vs_optax: float | None  # train steps: overhead / optax.adam's overhead
    compile_s: float | None  # None: eager (torch)
    compile_vs_optax: float | None
    state_bytes_per_param: float


def bench_case(case: Case, dtype: str, selected: Sequence[str], rounds: int, inner: int):
    """Rows of one case. Ratios and overheads are medians of per-round ratios and differences."""
    contenders = build_contenders(case, dtype, selected)
    times = _interleaved_times(contenders, rounds, inner)
    n = sum(math.prod(s) for s in case.shapes)
    compile_optax = contenders["optax.adam"].compile_s
    train = "optax.sgd" in times
    if train:  # the optimizer's overhead: a step minus the same step with stateless SGD
        optax_overhead = _paired(times, "optax.adam", "optax.sgd", operator.sub)
    rows = []
    for name, c in contenders.items():
        overhead = _paired(times, name, "optax.sgd", operator.sub) if train else None
        rows.append(
            Row(
                case=case.label,
                kind=case.kind,
                contender=name,
                ms_per_step=statistics.median(times[name]) * 1e3,
                vs_optax=_paired(times, name, "optax.adam", operator.truediv),
                vs_floor=None if train else _paired(times, name, "floor", operator.truediv),
                overhead_ms=None if overhead is None else overhead * 1e3,
                overhead_vs_optax=None if overhead is None else overhead / optax_overhead,
                compile_s=c.compile_s,
                compile_vs_optax=None if c.compile_s is None else c.compile_s / compile_optax,
                state_bytes_per_param=c.state_bytes / n,
            )
        )
    return rows


def _cell(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def format_table(rows: Sequence[Row]) -> str:
    """One Markdown table per case, in order; train steps show the overhead over optax.sgd."""
    tables: list[list[str]] = []
    for i, r in enumerate(rows):
        train = r.kind == "train step"
        if i == 0 or r.case != rows[i - 1].case:
            middle = "overhead ms | overhead x optax" if train else "x optax | x floor"
            tables.append(
                [
                    f"| {r.kind}: {r.case} | ms/step | {middle} | compile s | compile x optax | "
                    "state B/param |",
                    "|" + "---|" * 7,
                ]
            )
        middle = (
            f"{_cell(r.overhead_ms)} | {_cell(r.overhead_vs_optax)}"
            if train
            else f"{_cell(r.vs_optax)} | {_cell(r.vs_floor)}"
        )
        compile_s = "eager" if r.compile_s is None else _cell(r.compile_s)
        tables[-1].append(
            f"| {r.contender} | {r.ms_per_step:.2f} | {middle} | {compile_s} | "
            f"{_cell(r.compile_vs_optax)} | {r.state_bytes_per_param:.1f} |"
        )
    return "\n\n".join("\n".join(t) for t in tables)


# --- 8-bit against float32 (adam-jax bench --8bit) -------------------------------------------

# A GPT-2-small transformer block (d = 768): attention in/out, MLP in/out, layer norms, biases.
GPT2_BLOCK = [(768, 2304), (2304,), (768, 768), (768,), (768, 3072), (3072,), (3072, 768)] + [
    (768,)
] * 5


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
class Row8:
    """One row of ``adam-jax bench --8bit``: float32 against 8-bit moments, side by side."""

    case: str
    unit: str  # "ms" (a step) or "s" (lowering and compiling the jitted step)
    float32: float  # median over rounds
    eight_bit: float  # median over rounds
    ratio: float  # 8-bit / float32: the median of the per-round ratios
    float32_bytes: float | None  # state bytes per parameter (step rows)
    eight_bit_bytes: float | None


def format_8bit_table(rows: Sequence[Row8]) -> str:
    lines = [
        "| case | float32 | 8-bit | 8-bit / float32 | float32 B/param | 8-bit B/param |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        digits = 2 if r.unit == "ms" else 1
        lines.append(
            f"| {r.case} | {r.float32:.{digits}f} {r.unit} | {r.eight_bit:.{digits}f} {r.unit} | "
            f"{r.ratio:.2f} | {_cell(r.float32_bytes)} | {_cell(r.eight_bit_bytes, 3)} |"
        )
    return "\n".join(lines)


# The optimizers whose compile time ``--8bit`` measures, by name (built in a fresh process).
COMPILED_8BIT = {
    "float32": lambda: adam_jax.adam(LR),
    "8bit": lambda: quantized_moments(adam_jax.adam(LR)),
    "8bit, min_size=0": lambda: quantized_moments(adam_jax.adam(LR), min_size=0),
}


def _compile_probe(name: str, leaves: int) -> None:
    """Run in a fresh process: print the seconds to lower and compile the jitted step of
    ``COMPILED_8BIT[name]`` over ``leaves`` leaves of the small transformer."""
    shapes = _transformer_shapes(16 * 2**20)[:leaves]
    params, grads = _params(shapes, "float32"), _params(shapes, "float32", seed=1)
    print(json.dumps(_jax_contender(COMPILED_8BIT[name](), params, grads).compile_s))


def _compile_seconds(name: str, leaves: int) -> float:
    """Lowering and compiling time of ``name``'s step, measured in a fresh Python process: what a
    training script pays at its start, with no kernel or trace cached by an earlier compile."""
    import subprocess

    code = f"from adam_jax.tools import bench; bench._compile_probe({name!r}, {leaves})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"compiling {name!r} in a fresh process failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.split()[-1])


def bench_8bit(
    n_params: int, rounds: int, inner: int, leaves: int = 200
) -> tuple[list[Row8], dict[str, list[float]]]:
    """8-bit moments (``quantized_moments``) against float32 adam_jax, side by side.

    Step time at ``n_params`` in one flat array and at GPT-2-small block shapes (one block, 7.1M),
    interleaved round by round. Compile time (lowering and compiling the jitted step) at
    ``leaves`` leaves of a small transformer, with the default ``min_size`` (small leaves keep
    float32 moments) and with every leaf in 8 bits: ``min(rounds, 5)`` interleaved rounds, each
    compile in a fresh process. Medians over rounds; ratios are medians of per-round ratios.
    Returns the rows and the compile seconds of every round.
    """
    from adam_jax.tools.interrupt import check_interrupted

    rows = []
    for case, shapes in [
        (f"step, {n_params / 2**20:.0f}M flat", [(n_params,)]),
        ("step, GPT-2 block", GPT2_BLOCK),
    ]:
        params = _params(shapes, "float32")
        grads = _params(shapes, "float32", seed=1)
        n = sum(x.size for x in jax.tree.leaves(params))
        contenders = {
            "f32": _jax_contender(adam_jax.adam(LR), params, grads),
            "8bit": _jax_contender(quantized_moments(adam_jax.adam(LR)), params, grads),
        }
        times = _interleaved_times(contenders, rounds, inner)
        rows.append(
            Row8(
                case=f"{case} ({n / 1e6:.1f}M)",
                unit="ms",
                float32=statistics.median(times["f32"]) * 1e3,
                eight_bit=statistics.median(times["8bit"]) * 1e3,
                ratio=_paired(times, "8bit", "f32", operator.truediv),
                float32_bytes=contenders["f32"].state_bytes / n,
                eight_bit_bytes=contenders["8bit"].state_bytes / n,
            )
        )
        del contenders
    compile_s: dict[str, list[float]] = {name: [] for name in COMPILED_8BIT}
    for _ in range(min(rounds, 5)):
        for name in COMPILED_8BIT:
            check_interrupted()
            compile_s[name].append(_compile_seconds(name, leaves))
    for name in ("8bit", "8bit, min_size=0"):
        label = "" if name == "8bit" else ", every leaf in 8 bits (min_size=0)"
        rows.append(
            Row8(
                case=f"compile, {leaves} leaves{label}",
                unit="s",
                float32=statistics.median(compile_s["float32"]),
                eight_bit=statistics.median(compile_s[name]),
                ratio=_paired(compile_s, name, "float32", operator.truediv),
                float32_bytes=None,
                eight_bit_bytes=None,
            )
        )
    return rows, compile_s


# --- command line ----------------------------------------------------------------------------


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


def _versions() -> dict[str, str | None]:
    import importlib.metadata as metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {n: version(n) for n in ("adam-jax", "jax", "jaxlib", "optax", "torch")}


def _write_json_atomically(path: str, record: dict) -> None:
    """``record`` written to a temporary file renamed into place."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    every_case = OPTIMIZER_CASES + TRAIN_CASES
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"every case ({', '.join(every_case)}) at the large sizes: --params "
        f"{SIZES['full']['params']}, --leaves {SIZES['full']['leaves']} (default run: "
        f"{', '.join(DEFAULT_CASES)} at --params {SIZES['default']['params']}, "
        f"--leaves {SIZES['default']['leaves']})",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        default=None,
        choices=every_case,
        metavar="CASE",
        help=f"cases to run, of: {', '.join(every_case)}",
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        default=None,
        choices=CONTENDERS,
        metavar="NAME",
        help=f"contenders to time besides the references (the floor, optax.adam and, in train "
        f"steps, optax.sgd), of: {', '.join(CONTENDERS)}; default: all",
    )
    parser.add_argument(
        "--params", type=_at_least_one, default=None, help="size of the one-array case (>= 1)"
    )
    parser.add_argument(
        "--leaves",
        type=_at_least_one,
        default=None,
        help="leaves of the many-leaves (64x64) and train-many-leaves (32x32) cases (>= 1)",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the parameters (default float32)",
    )
    parser.add_argument(
        "--rounds",
        type=_at_least_one,
        default=None,
        help="interleaved rounds, the median is over them (>= 1; default 11, with --8bit 15)",
    )
    parser.add_argument(
        "--inner",
        type=_at_least_one,
        default=None,
        help="steps per round and contender (>= 1; default 3, with --8bit 5)",
    )
    parser.add_argument(
        "--json",
        type=_writable_json,
        default=None,
        help="also write the rows, device, versions, command and date to this JSON file "
        "(atomically)",
    )
    parser.add_argument(
        "--8bit",
        dest="eight_bit",
        action="store_true",
        help="only compare 8-bit moments with float32: steps at --params in one array (4M "
        "unless given) and at a GPT-2-small block, and compile time at --leaves leaves (default "
        "200), each compile in a fresh process, over min(--rounds, 5) rounds; float32 "
        "parameters, so it takes no --dtype (but float32), --cases, --contenders or --full",
    )
    _add_partition_argument(parser)


def _add_partition_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--partition",
        action="store_true",
        help="only compare Adam state partitioned over 8 data-parallel devices "
        "(adam_jax.partitioned) with replicated state, in train steps of a GPT-2 block and of "
        "--leaves 32x32 leaves (default 1000): state bytes per device, step time, collectives "
        "(on a CPU: 8 virtual devices, in a fresh process); takes --rounds, --inner, --json; "
        "run by adam_jax.tools.bench_partition",
    )


def _refusal(args: argparse.Namespace) -> str | None:
    """Why the command line cannot run as given (checked before any work), or None. ``--8bit``
    has cases, contenders and a dtype of its own: it refuses the options that choose them."""
    from adam_jax.tools.common import too_big

    if args.eight_bit:
        given = {
            "--dtype": args.dtype if args.dtype != "float32" else None,
            "--cases": args.cases,
            "--contenders": args.contenders,
            "--full": args.full,
        }
        words = [
            name if v is True else f"{name} {' '.join(v) if isinstance(v, list) else v}"
            for name, v in given.items() if v
        ]  # fmt: skip
        if words:
            return (
                "--8bit times float32 against 8-bit moments on float32 parameters over its own "
                f"cases: it does not take {', '.join(words)}. Leave them out or drop --8bit."
            )
        n = args.params or 4 * 2**20
        needed = bytes_needed(n, n, "float32", 2, [2 * 4, 2])  # float32 moments, 8-bit moments
        return too_big(needed, f"--8bit at --params {n}", "choose a smaller --params",
                       jax.devices()[0])  # fmt: skip
    sizes = SIZES["full" if args.full else "default"]
    params, leaves = args.params or sizes["params"], args.leaves or sizes["leaves"]
    names = args.cases or (OPTIMIZER_CASES + TRAIN_CASES if args.full else DEFAULT_CASES)
    selected = args.contenders or CONTENDERS
    needed, name = max(
        (case_bytes(n, params, leaves, args.dtype or "float32", selected), n) for n in names
    )
    return too_big(needed, f"the {name} case (--params {params}, --leaves {leaves})",
                   "choose a smaller --params or --leaves", jax.devices()[0])  # fmt: skip


def main(args: argparse.Namespace) -> int:
    problem = _refusal(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print(
        f"adam-jax bench on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}",
        flush=True,
    )
    eight_bit = args.eight_bit
    if eight_bit:
        rounds, inner = args.rounds or 15, args.inner or 5
        n, leaves = args.params or 4 * 2**20, args.leaves or 200
        ran = {"eight_bit": True, "params": n, "leaves": leaves, "dtype": "float32"}
    else:
        rounds, inner = args.rounds or 11, args.inner or 3
        cases = plan(args)
        sizes = SIZES["full" if args.full else "default"]
        ran = {  # what was run: the defaults filled in
            "eight_bit": False,
            "full": args.full,
            "cases": [c.name for c in cases],
            "contenders": args.contenders or CONTENDERS,
            "params": args.params or sizes["params"],
            "leaves": args.leaves or sizes["leaves"],
            "dtype": args.dtype or "float32",
        }
    record = {
        "command": shlex.join(["adam-jax", *sys.argv[1:]]),
        "arguments": {**ran, "rounds": rounds, "inner": inner},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device_kind": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "versions": _versions(),
        "load_average_at_start": os.getloadavg()[0],
    }
    if eight_bit:
        rows8, compile_s = bench_8bit(n, rounds, inner, leaves)
        print(format_8bit_table(rows8), flush=True)
        record["rows_8bit"] = [asdict(r) for r in rows8]
        record["compile_s_by_round"] = compile_s
    else:
        record["torch_devices"] = _torch_devices()
        # torch's intra-op threads: on a loaded machine, more than one can slow torch many-fold
        record["torch_threads"] = None if _torch() is None else _torch().get_num_threads()
        record["rows"] = []
        for case in cases:
            rows = bench_case(case, ran["dtype"], ran["contenders"], rounds, inner)
            print("\n" + format_table(rows), flush=True)
            record["rows"] += [asdict(r) for r in rows]
    record["load_average_at_end"] = os.getloadavg()[0]
    if args.json:
        _write_json_atomically(args.json, record)
    return 0
