"""What one paper-equivalent epoch of the full run costs on this machine, per figure.

``python -m adam_jax.tools.paper.cost`` trains, for each figure's model at the full run's size, one
epoch of the paper's iterations (469 for MNIST; the CNN only 10 iterations, it is slow on a CPU)
after a first epoch that compiles, and prints the process's CPU-seconds. Multiply by the epochs
and runs of ``runner.FULL`` to estimate a figure (``results/FULL_RUN_COST.md``).

It also prints XLA's count of the floating-point operations of one iteration of one run (the
minibatch loss and its gradient, the optimizer's update left out), and the rate this CPU reached.
The count times a figure's runs and iterations is the work any machine has to do for it, which
bounds from below what a device needs: ``python -m adam_jax.tools.paper.cost --work`` prints that
table alone (no training; the counts depend only on the models' shapes, so it loads small data).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time

import jax
import numpy as np

from adam_jax.tools.paper import data, models, runner, train


def _cpu(model, ds, make_tx, hparams, steps, vectorize=True) -> float:
    kw = {"vectorize": vectorize, "steps_per_epoch": steps}
    train.train_runs_with_steps(model, ds.x, ds.y, make_tx, hparams, 1, 0, **kw)  # compiles
    start = time.process_time()
    train.train_runs_with_steps(model, ds.x, ds.y, make_tx, hparams, 1, 0, **kw)
    return time.process_time() - start


def gflop_per_iteration(model: models.Model, ds: data.Dataset) -> float:
    """XLA's count, in GFLOP, of one iteration of one run of ``model``: the training loss of a
    minibatch of ``train.BATCH_SIZE`` examples of ``ds`` and its gradient."""
    params = model.init(jax.random.PRNGKey(0))
    x, y = ds.x[: train.BATCH_SIZE], ds.y[: train.BATCH_SIZE]
    key = jax.random.PRNGKey(1)
    step = jax.jit(jax.value_and_grad(lambda p: model.loss(p, x, y, key, True)))
    analysis = step.lower(params).compile().cost_analysis()
    if isinstance(analysis, list):  # older jax: one dict per device program
        analysis = analysis[0]
    return float(analysis["flops"]) / 1e9


def figure_work(budget: runner.Budget = runner.FULL) -> list[tuple[str, str, int, int]]:
    """``(figure, panel, runs, iterations of each run)`` of a run of ``budget``: the starting grids
    on the selection seeds and the selected rates on the verdict seeds (grid extensions, which
    happen only when a selection lands on an edge, are not counted)."""
    seeds, chosen_on = budget.seeds, budget.selection_seeds
    rows = []
    for p in runner.panels(budget):
        grids = sum(len(runner.grid_for(o, budget, runner.scheduled(p, o))) for o in p.optimizers)
        runs = grids * chosen_on + len(p.optimizers) * seeds
        rows.append(
            (p.figure, p.panel, runs, budget.epochs[p.panel] * runner.PAPER_STEPS[p.dataset])
        )
    grid = len(runner.VAE_BETA1) * len(runner.VAE_BETA2) * len(runner.VAE_LOG10_ALPHA)
    runs = 2 * grid * (seeds + chosen_on)  # with and without bias correction
    rows.append(("fig4", "fig4", runs, budget.epochs["fig4_many"] * runner.PAPER_STEPS["mnist"]))
    return rows


def work_table(budget: runner.Budget = runner.FULL) -> str:
    """The Markdown table of :func:`figure_work` with XLA's count of each panel's iteration: the
    floating-point work of each figure, in PFLOP (1e15)."""
    # The counts depend on the shapes only: a few documents of the corpus and 256 examples do.
    small = dataclasses.replace(budget, imdb_docs=300, max_examples=256)
    datasets = runner.load_data(["fig1", "fig2", "fig3", "fig4"], small, None)
    panels = {p.panel: p for p in runner.PANELS}
    lines = [
        "| figure | panel | runs | iterations per run | GFLOP per run and iteration "
        "(XLA's count) | PFLOP |",
        "|---|---|---|---|---|---|",
    ]
    totals: dict[str, float] = {}
    for figure, panel, runs, steps in figure_work(budget):
        ds = datasets[panels[panel].dataset if panel != "fig4" else "mnist"]
        gflop = gflop_per_iteration(runner.build_model(panel, ds, budget), ds)
        pflop = gflop * runs * steps / 1e6
        totals[figure] = totals.get(figure, 0.0) + pflop
        lines.append(f"| {figure} | {panel} | {runs} | {steps:,} | {gflop:.3g} | {pflop:.3g} |")
    for figure, pflop in totals.items():
        lines.append(f"| {figure} | all | | | | **{pflop:.3g}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adam_jax.tools.paper.cost")
    parser.add_argument(
        "--work", action="store_true", help="print each figure's XLA flop count only (no training)"
    )
    if parser.parse_args(argv).work:
        print(work_table())
        return 0
    full = runner.FULL
    mnist = data.load("mnist")
    rows = []
    for panel, opt, sched in (("fig1_mnist", "adam", True), ("fig2", "adam", False)):
        model = runner.build_model(panel, mnist, full)
        lrs = {"lr": np.full(6, 1e-3)}
        cpu = _cpu(model, mnist, runner.make_optimizer(opt, sched), lrs, 469)
        rows.append((panel, 6, 469, cpu, gflop_per_iteration(model, mnist)))
    grid = list(itertools.product(runner.VAE_BETA1, runner.VAE_BETA2, runner.VAE_LOG10_ALPHA))
    hp = {
        "b1": np.array([g[0] for g in grid]),
        "b2": np.array([g[1] for g in grid]),
        "lr": np.array([10.0 ** g[2] for g in grid]),
    }
    vae = runner.build_model("fig4", mnist, full)
    cpu = _cpu(vae, mnist, runner._vae_optimizer(True), hp, 469)
    rows.append(("fig4", len(grid), 469, cpu, gflop_per_iteration(vae, mnist)))
    cifar = runner.load_data(["fig3"], full, None)["cifar10"]
    cnn = runner.build_model("fig3", cifar, full)
    adam = runner.make_optimizer("adam", False)
    cpu = _cpu(cnn, cifar, adam, {"lr": np.array([1e-3])}, 10, False)
    rows.append(("fig3", 1, 10, cpu, gflop_per_iteration(cnn, cifar)))
    print(
        "| panel | runs (vmapped) | iterations | CPU-s | CPU-s per run and 1,000 iterations "
        "| GFLOP per run and iteration (XLA's count) | GFLOP per CPU-s |"
    )
    print("|---|---|---|---|---|---|---|")
    for panel, runs, steps, cpu, gflop in rows:
        per = 1000 * cpu / runs / steps
        rate = gflop * runs * steps / cpu
        print(f"| {panel} | {runs} | {steps} | {cpu:.1f} | {per:.3g} | {gflop:.3g} | {rate:.3g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
