"""Fig. 2b: Adam against SFO on the deterministic, L2-regularised MLP cost, per iteration and per
wall-clock second (Section 6.2).

    python -m adam_jax.tools.paper.fig2b --out DIR [--quick | --tiny] [--seeds 0,1,2,3,4]

The objective is the mean over N fixed minibatches of 128 (the data set, shuffled once per seed,
cut into N; the remainder dropped) of f_i(θ) = softmax cross-entropy of the MLP of Section 6.2
without dropout + (λ/2)·‖W‖² (weights, not biases). Adam takes the minibatches in a fixed cycle,
one per iteration; SFO (:mod:`sfo`) sees them as its N subfunctions, and each of its evaluations
of one is an iteration (its second evaluations after a suspect step included). Adam's α is
chosen on the selection seeds by the area under the log-cost curve over the passes (rules v3);
SFO has no hyperparameter to choose. On each verdict seed the two run in one process, one
iteration of each in turn, each iteration timed (Adam's until its result is ready); the seconds
axis sums those times and leaves out the evaluation of the plotted full cost after every pass
(every N iterations) and the compilation. Writes results.csv (runner.FIELDS plus ``seconds``),
summary.md, run.json and fig2b.png to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import adam_jax
from adam_jax.tools.paper import claims, models, runner, sfo
from adam_jax.tools.paper import data as data_lib
from adam_jax.tools.paper.cli import _git_commit, _now, parse_seeds
from adam_jax.tools.paper.train import BATCH_SIZE

FIELDS = (*runner.FIELDS, "seconds")
WEIGHT_DECAY = 1e-4  # λ; the paper gives none (the value Fig. 1's logistic regression uses here)


@dataclasses.dataclass(frozen=True)
class Mode:
    """How much of Fig. 2b a run does."""

    name: str  # a runner.BUDGETS name, so the verdicts are labelled like the other figures'
    hidden: int  # units in each of the two hidden layers (the paper: 1000)
    passes: int  # passes over the N minibatches (N iterations each)
    seeds: int  # verdict seeds
    selection_seeds: int  # seeds 1000, 1001, ... on which Adam's α is chosen
    grid: tuple[float, ...]  # Adam's starting α grid, extended at an edge (at most 2 steps)
    max_examples: int | None = None
    max_extend: int = 2


MODES = {
    "quick": Mode("quick", hidden=1000, passes=20, seeds=5, selection_seeds=2,
                  grid=(3e-4, 1e-3, 3e-3)),
    "tiny": Mode("tiny", hidden=16, passes=2, seeds=2, selection_seeds=1, grid=(1e-3,),
                 max_examples=256, max_extend=0),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Problem:
    """The objective of one seed: N minibatches, the starting point, and compiled functions of the
    flat parameter vector."""

    x: jax.Array  # (N, 128, features)
    y: jax.Array  # (N, 128)
    theta0: jax.Array  # flat float32 parameters
    fns: Functions

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def cost(self, theta) -> float:
        """The full objective: the mean of the N f_i."""
        return float(self.fns.cost(jnp.asarray(theta, jnp.float32), self.x, self.y))


@dataclasses.dataclass(frozen=True)
class Functions:
    init: Callable  # PRNG key -> flat float32 parameters (model.init, eager: as committed runs)
    value_and_grad: Callable  # (theta, i, x, y) -> (f_i, ∇f_i)
    adam_step: Callable  # (theta, state, lr, i, x, y) -> (theta, state)
    adam_init: Callable  # (theta, lr) -> state
    cost: Callable  # (theta, x, y) -> mean of the f_i


@functools.cache
def functions(features: int, classes: int, hidden: int) -> Functions:
    """Compiled functions of the MLP ``features``-``hidden``-``hidden``-``classes`` (no dropout)
    and its L2 penalty; built once per size and reused by every seed."""
    model = models.mlp(features, classes, hidden, input_dropout=0.0, hidden_dropout=0.0)
    key = jax.random.PRNGKey(0)  # unused: no dropout
    shapes = jax.eval_shape(model.init, key)
    _, unravel = ravel_pytree(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))

    def f(theta, xb, yb):
        params = unravel(theta)
        return model.loss(params, xb, yb, key, False) + models._l2(params, WEIGHT_DECAY)

    def f_i(theta, i, x, y):
        return f(theta, x[i], y[i])

    def adam_step(theta, state, lr, i, x, y):
        grad = jax.grad(f_i)(theta, i, x, y)
        updates, state = adam_jax.adam(lr).update(grad, state, theta)
        return optax.apply_updates(theta, updates), state

    def cost(theta, x, y):
        return jnp.mean(jax.vmap(f, in_axes=(None, 0, 0))(theta, x, y))

    return Functions(
        lambda seed_key: ravel_pytree(model.init(seed_key))[0].astype(jnp.float32),  # eager
        jax.jit(jax.value_and_grad(f_i)),
        jax.jit(adam_step),
        jax.jit(lambda theta, lr: adam_jax.adam(lr).init(theta)),
        jax.jit(cost),
    )


def problem(ds: data_lib.Dataset, hidden: int, seed: int) -> Problem:
    """Seed ``seed``'s minibatches (a permutation of the data cut into groups of 128) and its
    initialisation."""
    n = len(ds.y) // BATCH_SIZE
    order = np.random.default_rng(seed).permutation(len(ds.y))[: n * BATCH_SIZE]
    fns = functions(ds.x.shape[1], ds.num_classes, hidden)
    x = jnp.asarray(ds.x[order].reshape(n, BATCH_SIZE, -1), jnp.float32)
    y = jnp.asarray(ds.y[order].reshape(n, BATCH_SIZE))
    return Problem(x, y, fns.init(jax.random.PRNGKey(seed)), fns)


class AdamRun:
    """Adam (adam_jax.adam) over the minibatches in a fixed cycle, one per ``step``."""

    def __init__(self, p: Problem, lr: float) -> None:
        self.p, self.lr = p, jnp.float32(lr)
        self.theta, self.state = p.theta0, p.fns.adam_init(p.theta0, self.lr)
        self.evaluations = 0

    def step(self) -> None:
        i = self.evaluations % self.p.n
        self.theta, self.state = self.p.fns.adam_step(
            self.theta, self.state, self.lr, i, self.p.x, self.p.y
        )
        jax.block_until_ready(self.theta)
        self.evaluations += 1

    def params(self):
        return self.theta


class SFORun:
    """SFO over the minibatches as its subfunctions; float64 on the host, gradients from JAX."""

    def __init__(self, p: Problem) -> None:
        def f_and_grad(theta: np.ndarray, i: int) -> tuple[float, np.ndarray]:
            value, grad = p.fns.value_and_grad(jnp.asarray(theta, jnp.float32), i, p.x, p.y)
            return float(value), np.asarray(grad, np.float64)

        self.opt = sfo.SFO(f_and_grad, np.asarray(p.theta0, np.float64), p.n)

    @property
    def evaluations(self) -> int:
        return self.opt.evaluations

    def step(self) -> None:
        self.opt.step()

    def params(self):
        return self.opt.x


def race(p: Problem, runs: dict, passes: int) -> dict[str, list[tuple[int, int, float, float]]]:
    """Run ``runs`` (name -> AdamRun or SFORun) for ``passes`` passes, one iteration of each in
    turn, timing each; name -> [(pass, evaluations, seconds, full cost)] from pass 0."""
    start = p.cost(p.theta0)
    out = {name: [(0, 0, 0.0, start)] for name in runs}
    seconds = dict.fromkeys(runs, 0.0)
    for k in range(1, passes + 1):
        while any(r.evaluations < k * p.n for r in runs.values()):
            for name, r in runs.items():
                if r.evaluations < k * p.n:
                    t0 = time.perf_counter()
                    r.step()
                    seconds[name] += time.perf_counter() - t0
        for name, r in runs.items():
            out[name].append((k, r.evaluations, seconds[name], p.cost(r.params())))
    return out


def _rows(ds, mode, name, lr, seed, stage, records) -> list[dict]:
    label = "adam" if name == "adam" else "sfo"
    hp = f"lr={lr:.6g}" if name == "adam" else "defaults (K_max=3N+3, 10 pairs, H0=1e5)"
    base = {
        "figure": "fig2b", "panel": "fig2b", "dataset": ds.source,
        "model": f"mlp {ds.x.shape[1]}-{mode.hidden}-{mode.hidden}-{ds.num_classes}, "
                 f"L2 {WEIGHT_DECAY:g}, no dropout",
        "optimizer": label, "hyperparameters": hp, "learning_rate": f"{lr:.6g}" if lr else "",
        "beta1": "", "beta2": "", "bias_correction": "", "seed": seed, "stage": stage,
        "selected": int(stage == claims.VERDICT),
    }  # fmt: skip
    return [
        {k: str(v) for k, v in base.items()}
        | {"epoch": str(e), "iteration": str(it), "loss": repr(c), "seconds": f"{s:.6f}"}
        for e, it, s, c in records
    ]


def select_alpha(ds, mode: Mode, progress) -> tuple[float, list[dict]]:
    """Adam's α: the lowest mean area under the log-cost curve over the selection seeds, the grid
    extended past an edge it is chosen at (as runner.run_panel does)."""
    seeds = [runner.SELECTION_SEED_BASE + s for s in range(mode.selection_seeds)]
    problems = {s: problem(ds, mode.hidden, s) for s in seeds}
    scores: dict[float, list[float]] = {}
    rows: dict[float, list[dict]] = {}
    pending, extended = list(mode.grid), {True: 0, False: 0}
    while pending:
        for lr in pending:
            rows[lr], scores[lr] = [], []
            for s, p in problems.items():
                rec = race(p, {"adam": AdamRun(p, lr)}, mode.passes)["adam"]
                rows[lr] += _rows(ds, mode, "adam", lr, s, claims.SELECTION, rec)
                scores[lr].append(claims.speed([(e, c) for e, _, _, c in rec]))
                progress(f"selection seed {s}, α={lr:g}: mean ln cost {scores[lr][-1]:.4f}")
        grid, best = tuple(sorted(scores)), runner.select(scores)
        pending = []
        for up, edge in ((True, grid[-1]), (False, grid[0])):
            if best == edge and extended[up] < mode.max_extend and len(grid) > 1:
                extended[up] += 1
                pending = [runner.extend_grid(grid, up)]
                break
    for lr, rs in rows.items():
        for r in rs:
            r["selected"] = str(int(lr == best))
    return best, [r for lr in sorted(rows) for r in rows[lr]]


def run(mode: Mode, seeds: Sequence[int], progress=print) -> tuple[list[dict], dict]:
    """All rows of a Fig. 2b run, and the timing facts for the summary."""
    ds = data_lib.digits_as_mnist().subset(mode.max_examples)
    alpha, rows = select_alpha(ds, mode, progress)
    for seed in seeds:
        p = problem(ds, mode.hidden, seed)
        AdamRun(p, alpha).step(), SFORun(p).step()  # compile before timing
        rec = race(p, {"adam": AdamRun(p, alpha), "sfo": SFORun(p)}, mode.passes)
        rows += _rows(ds, mode, "adam", alpha, seed, claims.VERDICT, rec["adam"])
        rows += _rows(ds, mode, "sfo", 0.0, seed, claims.VERDICT, rec["sfo"])
        progress(
            f"seed {seed}: final cost Adam {rec['adam'][-1][3]:.4g} ({rec['adam'][-1][2]:.1f} s), "
            f"SFO {rec['sfo'][-1][3]:.4g} ({rec['sfo'][-1][2]:.1f} s)"
        )
    facts = {
        "alpha": alpha,
        "minibatches": len(ds.y) // BATCH_SIZE,
        "parameters": int(problem(ds, mode.hidden, 0).theta0.size),
        "dataset": ds.source,
    }
    return rows, facts


def figure(rows: list[dict], path: Path, caption: str) -> Path:
    """Two panels, full cost against iterations and against seconds, a line per verdict seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"adam": ("tab:red", "Adam"), "sfo": ("tab:blue", "SFO")}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
    for ax, field, xlabel in (
        (axes[0], "iteration", "iterations (minibatch evaluations)"),
        (axes[1], "seconds", "seconds of optimizer time (this CPU)"),
    ):
        for opt, (colour, name) in styles.items():
            by_seed: dict[str, list] = {}
            for r in rows:
                if r["optimizer"] == opt and r["stage"] == claims.VERDICT:
                    by_seed.setdefault(r["seed"], []).append((float(r[field]), float(r["loss"])))
            alpha = next((r["learning_rate"] for r in rows if r["optimizer"] == opt
                          and r["selected"] == "1" and r["learning_rate"]), "")  # fmt: skip
            label = f"{name} (α={alpha})" if alpha else f"{name} (no hyperparameters)"
            for i, (_, pts) in enumerate(sorted(by_seed.items())):
                pts.sort()
                ax.plot(*zip(*pts, strict=True), color=colour, lw=1, alpha=0.8,
                        label=f"{label}, one line per seed" if i == 0 else None)  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("full training cost (cross-entropy + L2)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("Fig. 2b, per iteration")
    axes[1].set_title("Fig. 2b, per wall-clock second")
    fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def notes(rows: list[dict], facts: dict) -> str:
    """The per-seed numbers under the claims table: what each verdict was computed from."""
    timed = claims.timed_curves(rows, "fig2b")
    lines = [
        "Per verdict seed (seconds: optimizer time only, iterations interleaved in one process; "
        "the full cost is evaluated after every pass, outside the timing):",
        "",
        "| seed | Adam final cost | SFO final cost | Adam iterations, s | SFO iterations, s | "
        "s per iteration Adam / SFO | SFO / Adam |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed in sorted(timed.get("adam", {})):
        (sa, ia, ca), (ss, i_s, cs) = timed["adam"][seed][-1], timed["sfo"][seed][-1]
        lines.append(
            f"| {seed} | {ca:.4g} | {cs:.4g} | {ia}, {sa:.1f} | {i_s}, {ss:.1f} | "
            f"{sa / ia * 1e3:.1f} ms / {ss / i_s * 1e3:.1f} ms | {(ss / i_s) / (sa / ia):.2f}x |"
        )
    basis = (3 * facts["minibatches"] + 3) * facts["parameters"] * 8
    lines += [
        "",
        f"SFO's memory: its basis alone is (3N + 3) x D float64 numbers = {basis / 2**20:.0f} MiB "
        f"for N = {facts['minibatches']} minibatches and D = {facts['parameters']:,} parameters "
        "(Adam: 2 D numbers). SFO is `adam_jax/tools/paper/sfo.py`, written from the paper; its "
        "docstring lists where it departs from the reference implementation.",
    ]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


@contextlib.contextmanager
def one_thread():
    """Both optimizers on one CPU thread: NumPy's BLAS (SFO's subspace) through threadpoolctl,
    XLA's CPU backend (both gradients, Adam's update) through XLA_FLAGS, which takes effect only
    when nothing has been computed yet in the process (the command; not a test calling main).
    On a machine shared with other work, two threads per optimizer made SFO's step several times slower."""
    from threadpoolctl import threadpool_limits

    flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    with threadpool_limits(limits=1):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adam_jax.tools.paper.fig2b",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--tiny", action="store_true", help="a smoke test of a few seconds")
    parser.add_argument("--quick", action="store_true", help="the committed run (the default)")
    parser.add_argument("--seeds", type=parse_seeds, default=None, help="verdict seeds, 0,1,...")
    args = parser.parse_args(argv)
    mode = MODES["tiny" if args.tiny else "quick"]
    seeds = args.seeds if args.seeds is not None else list(range(mode.seeds))
    if set(seeds) & {runner.SELECTION_SEED_BASE + s for s in range(mode.selection_seeds)}:
        parser.error(f"--seeds must not include the selection seeds {runner.SELECTION_SEED_BASE}+")
    args.out.mkdir(parents=True, exist_ok=True)
    command = (
        f"python -m adam_jax.tools.paper.fig2b --out {args.out}"
        + (" --tiny" if args.tiny else " --quick")
        + (f" --seeds {','.join(map(str, seeds))}" if args.seeds is not None else "")
    )
    started, t0, cpu0 = _now(), time.perf_counter(), time.process_time()
    with one_thread():
        rows, facts = run(mode, seeds, progress=lambda m: print(m, file=sys.stderr, flush=True))
    info = {
        "command": command, "mode": mode.name, "figures": ["fig2b"], "seeds": list(seeds),
        "data_dir": None, "adam_jax": adam_jax.__version__, "git_commit": _git_commit(),
        "python": platform.python_version(), "jax": jax.__version__, "optax": optax.__version__,
        "numpy": np.__version__, "device": f"{jax.devices()[0].platform}",
        "cpu_count": os.cpu_count(), "start": started, "end": _now(),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "hidden": mode.hidden, "passes": mode.passes, "weight_decay": WEIGHT_DECAY, **facts,
    }  # fmt: skip
    write_csv(rows, args.out / "results.csv")
    (args.out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    found = claims.check(rows, 1, 1)
    caption = (
        f"What was run: {mode.name} mode, MLP {facts['parameters']:,} parameters "
        f"(64-{mode.hidden}-{mode.hidden}-10, no dropout, L2 {WEIGHT_DECAY:g}), {facts['dataset']}, "
        f"{facts['minibatches']} fixed minibatches of 128, {mode.passes} passes, verdict seeds "
        f"{', '.join(map(str, seeds))}; Adam's α={facts['alpha']:g} chosen on the selection "
        "seeds; both optimizers in one process, iterations interleaved and timed."
    )
    figure(rows, args.out / "fig2b.png", caption)
    header = "\n".join([
        f"# Fig. 2b: Adam against SFO ({mode.name} run, seeds {', '.join(map(str, seeds))})",
        "",
        f"Run {info['start']} to {info['end']} ({info['wall_seconds']:.0f} s wall clock, "
        f"{info['cpu_seconds']:.0f} s CPU, {os.cpu_count()} CPU cores); adam_jax "
        f"{info['adam_jax']}, jax {info['jax']}, optax {info['optax']}, numpy {info['numpy']}, "
        f"Python {info['python']}, commit {info['git_commit']}. Command: `{command}`.",
        "",
        caption,
    ])  # fmt: skip
    footer = notes(rows, facts)
    summary = claims.summary_markdown(found, header, footer, mode.name)
    (args.out / "summary.md").write_text(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
