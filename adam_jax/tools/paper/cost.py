"""What one paper-equivalent epoch of the full run costs on this machine, per figure.

``python -m adam_jax.tools.paper.cost`` trains, for each figure's model at the full run's size, one
epoch of the paper's iterations (469 for MNIST; the CNN only 10 iterations, it is slow on a CPU)
after a first epoch that compiles, and prints the process's CPU-seconds. Multiply by the epochs
and runs of ``runner.FULL`` to estimate a figure (``results/FULL_RUN_COST.md``).
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from adam_jax.tools.paper import data, runner, train


def _cpu(model, ds, make_tx, hparams, steps, vectorize=True) -> float:
    kw = {"vectorize": vectorize, "steps_per_epoch": steps}
    train.train_runs_with_steps(model, ds.x, ds.y, make_tx, hparams, 1, 0, **kw)  # compiles
    start = time.process_time()
    train.train_runs_with_steps(model, ds.x, ds.y, make_tx, hparams, 1, 0, **kw)
    return time.process_time() - start


def main() -> int:
    full = runner.FULL
    mnist = data.load("mnist")
    rows = []
    for panel, opt, sched in (("fig1_mnist", "adam", True), ("fig2", "adam", False)):
        model = runner.build_model(panel, mnist, full)
        lrs = {"lr": np.full(6, 1e-3)}
        rows.append(
            (panel, 6, 469, _cpu(model, mnist, runner.make_optimizer(opt, sched), lrs, 469))
        )
    grid = list(itertools.product(runner.VAE_BETA1, runner.VAE_BETA2, runner.VAE_LOG10_ALPHA))
    hp = {
        "b1": np.array([g[0] for g in grid]),
        "b2": np.array([g[1] for g in grid]),
        "lr": np.array([10.0 ** g[2] for g in grid]),
    }
    vae = runner.build_model("fig4", mnist, full)
    rows.append(("fig4", len(grid), 469, _cpu(vae, mnist, runner._vae_optimizer(True), hp, 469)))
    cifar = runner.load_data(["fig3"], full, None)["cifar10"]
    cnn = runner.build_model("fig3", cifar, full)
    adam = runner.make_optimizer("adam", False)
    rows.append(("fig3", 1, 10, _cpu(cnn, cifar, adam, {"lr": np.array([1e-3])}, 10, False)))
    print("| panel | runs (vmapped) | iterations | CPU-s | CPU-s per run and 1,000 iterations |")
    print("|---|---|---|---|---|")
    for panel, runs, steps, cpu in rows:
        print(f"| {panel} | {runs} | {steps} | {cpu:.1f} | {1000 * cpu / runs / steps:.3g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
