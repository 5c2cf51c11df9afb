"""The Section 6 experiments: which model, data, optimizers and grids each figure uses, and the run.

Every optimizer's learning rate is chosen by grid search: all grid points are trained from the same
initialisation, and the one with the lowest final training cost is the "selected" curve a figure
shows. Baselines come from optax; Adam and AdaMax from adam_jax. All rows go to ``results.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import optax

import adam_jax
from adam_jax.paper import data as data_lib
from adam_jax.paper import models, train

FIGURES = ("fig1", "fig2", "fig3", "fig4")
FIELDS = (
    "figure", "panel", "dataset", "model", "optimizer", "hyperparameters", "learning_rate",
    "beta1", "beta2", "bias_correction", "selected", "epoch", "loss",
)  # fmt: skip

LABELS = {
    "adam": "Adam",
    "adamax": "AdaMax",
    "sgd_nesterov": "SGD Nesterov",
    "adagrad": "AdaGrad",
    "rmsprop": "RMSProp",
    "adadelta": "AdaDelta",
}

# Learning-rate grids (the paper says "dense grid" and gives none). Quick mode uses 3-4 points.
FULL_GRIDS = {
    "adam": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    "adamax": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    "sgd_nesterov": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    "adagrad": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    "rmsprop": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    "adadelta": (0.1, 0.3, 1.0, 3.0),
}
QUICK_GRIDS = {  # half-decade steps, as the full grids, over a narrower range
    "adam": (1e-3, 3e-3, 1e-2, 3e-2),
    "adamax": (2e-3, 6e-3, 2e-2, 6e-2),
    "sgd_nesterov": (1e-2, 3e-2, 1e-1, 3e-1),
    "adagrad": (1e-2, 3e-2, 1e-1, 3e-1),
    "rmsprop": (3e-4, 1e-3, 3e-3),
    "adadelta": (0.3, 1.0, 3.0),
}
TINY_GRIDS = {k: v[:1] for k, v in QUICK_GRIDS.items()}

# Fig. 4 grid, exactly the paper's.
VAE_BETA1 = (0.0, 0.9)
VAE_BETA2 = (0.99, 0.999, 0.9999)
VAE_LOG10_ALPHA = (-5, -4, -3, -2, -1)


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much of the paper a run does. ``full`` is the documented full run."""

    name: str
    epochs: dict[str, int]  # per panel; fig4 uses "fig4_few" and "fig4_many"
    grids: dict[str, tuple[float, ...]]
    cnn_channels: tuple[int, int, int] = (64, 64, 128)
    cnn_hidden: int = 1000
    max_examples: int | None = None  # cap on training examples per dataset


FULL = Budget(
    "full",
    {"fig1_mnist": 45, "fig1_imdb": 45, "fig2": 100, "fig3": 45, "fig3_early": 3,
     "fig4_few": 10, "fig4_many": 100},
    FULL_GRIDS,
)  # fmt: skip
QUICK = Budget(
    "quick",
    {"fig1_mnist": 15, "fig1_imdb": 10, "fig2": 8, "fig3": 6, "fig3_early": 2,
     "fig4_few": 3, "fig4_many": 15},
    QUICK_GRIDS,
    cnn_channels=(16, 16, 32),
    cnn_hidden=250,
)  # fmt: skip
TINY = Budget(
    "tiny",
    {"fig1_mnist": 2, "fig1_imdb": 2, "fig2": 2, "fig3": 2, "fig3_early": 1,
     "fig4_few": 1, "fig4_many": 2},
    TINY_GRIDS,
    cnn_channels=(4, 4, 8),
    cnn_hidden=16,
    max_examples=256,
)  # fmt: skip
BUDGETS = {b.name: b for b in (FULL, QUICK, TINY)}


def make_optimizer(name: str, schedule: bool) -> train.MakeTx:
    """A function of the (traced) hyperparameters ``{"lr": ...}`` giving the optimizer ``name``.

    With ``schedule`` the step size is alpha/sqrt(t) (Section 6.1) for every optimizer.
    """

    def lr(h):
        return adam_jax.inverse_sqrt_schedule(h["lr"]) if schedule else h["lr"]

    makers: dict[str, Callable] = {
        "adam": lambda h: adam_jax.adam(lr(h)),
        "adamax": lambda h: adam_jax.adamax(lr(h)),
        "sgd_nesterov": lambda h: optax.sgd(lr(h), momentum=0.9, nesterov=True),
        "adagrad": lambda h: optax.adagrad(lr(h)),
        "rmsprop": lambda h: optax.rmsprop(lr(h)),
        "adadelta": lambda h: optax.adadelta(lr(h)),
    }
    if name not in makers:
        raise ValueError(f"unknown optimizer {name!r}: choose one of {sorted(makers)}")
    return makers[name]


def zca_whiten(x: np.ndarray, eps: float = 0.1) -> np.ndarray:
    """ZCA-whiten images (Section 6.3 "whitened inputs"); ``eps`` (relative to the mean
    eigenvalue) keeps near-zero-variance directions (constant border pixels) from exploding."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    flat = flat - flat.mean(0)
    eigval, eigvec = np.linalg.eigh(flat.T @ flat / len(flat))
    eigval = np.maximum(eigval, 0.0)
    w = eigvec @ np.diag(1.0 / np.sqrt(eigval + eps * eigval.mean())) @ eigvec.T
    return (flat @ w).reshape(x.shape).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Panel:
    """One curve-comparison panel: a model on a dataset, compared across optimizers."""

    figure: str
    panel: str
    dataset: str
    optimizers: tuple[str, ...]
    schedule: bool = False


PANELS = (
    Panel("fig1", "fig1_mnist", "mnist", ("adam", "sgd_nesterov", "adagrad", "adamax"), True),
    Panel("fig1", "fig1_imdb", "imdb", ("adam", "adagrad", "rmsprop", "sgd_nesterov", "adamax"), True),
    Panel("fig2", "fig2", "mnist", ("adam", "adagrad", "rmsprop", "sgd_nesterov", "adadelta", "adamax")),
    Panel("fig3", "fig3", "cifar10", ("adam", "adagrad", "sgd_nesterov", "adamax")),
)  # fmt: skip


def build_model(panel: str, ds: data_lib.Dataset, budget: Budget) -> models.Model:
    """The model of a panel for dataset ``ds`` (input size taken from the data)."""
    if panel == "fig1_mnist":
        return models.logistic_regression(ds.x.shape[1], ds.num_classes, weight_decay=1e-4)
    if panel == "fig1_imdb":
        return models.logistic_regression(ds.x.shape[1], 2, weight_decay=1e-4, input_dropout=0.5)
    if panel == "fig2":
        return models.mlp(ds.x.shape[1], ds.num_classes)
    if panel == "fig3":
        return models.cnn(ds.x.shape[1:], ds.num_classes, budget.cnn_channels, budget.cnn_hidden)
    if panel == "fig4":
        return models.vae(ds.x.shape[1])
    raise ValueError(f"unknown panel {panel!r}")


def panels_for(figures: Iterable[str]) -> list[str]:
    """Panel names (fig4 is one panel) needed by ``figures``, in order."""
    wanted = set(figures)
    names = [p.panel for p in PANELS if p.figure in wanted]
    return names + (["fig4"] if "fig4" in wanted else [])


def datasets_for(figures: Iterable[str]) -> list[str]:
    """Datasets needed by ``figures``."""
    wanted = set(figures)
    names = [p.dataset for p in PANELS if p.figure in wanted]
    names += ["mnist"] if "fig4" in wanted else []
    return list(dict.fromkeys(names))


def grid_for(optimizer: str, budget: Budget, schedule: bool) -> tuple[float, ...]:
    """The learning rates tried for ``optimizer``. Under alpha/sqrt(t) the step shrinks 10x by
    t = 100, so the grid is moved up a decade (its largest value and 10x that in quick mode)."""
    grid = budget.grids[optimizer]
    if not schedule:
        return grid
    if budget.name == "full":
        return (*grid, *(10 * g for g in grid[-2:]))
    return tuple(10 * g for g in grid)


def work_units(figures: Iterable[str], budget: Budget) -> int:
    """Epochs of single runs the figures need (the progress bar's total)."""
    total = 0
    for p in PANELS:
        if p.figure in set(figures):
            total += (
                sum(len(grid_for(o, budget, p.schedule)) for o in p.optimizers)
                * budget.epochs[p.panel]
            )
    if "fig4" in set(figures):
        total += 2 * budget.epochs["fig4_many"]  # one vectorised call per bias-correction setting
    return total


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def run_panel(
    panel: Panel,
    ds: data_lib.Dataset,
    budget: Budget,
    seed: int,
    tick: Callable[[int], None],
) -> list[dict]:
    """Grid-search every optimizer of ``panel``; one row per (run, epoch)."""
    model = build_model(panel.panel, ds, budget)
    epochs = budget.epochs[panel.panel]
    rows = []
    for opt in panel.optimizers:
        grid = np.asarray(grid_for(opt, budget, panel.schedule), np.float64)
        vectorize = panel.panel != "fig3"
        losses = train.train_runs(
            model, ds.x, ds.y, make_optimizer(opt, panel.schedule), {"lr": grid}, epochs, seed,
            on_epoch=functools.partial(tick, len(grid) if vectorize else 1), vectorize=vectorize,
        )  # fmt: skip
        final = np.where(np.isfinite(losses[:, -1]), losses[:, -1], np.inf)
        best = int(np.argmin(final))
        sched = " schedule=alpha/sqrt(t)" if panel.schedule else ""
        for r, lr in enumerate(grid):
            for e in range(epochs + 1):
                rows.append(
                    {
                        "figure": panel.figure, "panel": panel.panel, "dataset": ds.source,
                        "model": model.name, "optimizer": opt,
                        "hyperparameters": f"lr={_fmt(lr)}{sched}", "learning_rate": _fmt(lr),
                        "beta1": "", "beta2": "", "bias_correction": "",
                        "selected": int(r == best), "epoch": e, "loss": repr(float(losses[r, e])),
                    }
                )  # fmt: skip
    return rows


def run_vae_grid(
    ds: data_lib.Dataset, budget: Budget, seed: int, tick: Callable[[int], None]
) -> list[dict]:
    """Fig. 4: the VAE over the paper's full (beta1, beta2, alpha) grid, with and without bias
    correction; losses after ``fig4_few`` and ``fig4_many`` epochs come from one run each."""
    model = build_model("fig4", ds, budget)
    grid = list(itertools.product(VAE_BETA1, VAE_BETA2, VAE_LOG10_ALPHA))
    hp = {
        "b1": np.array([g[0] for g in grid]),
        "b2": np.array([g[1] for g in grid]),
        "lr": np.array([10.0 ** g[2] for g in grid]),
    }
    epochs = budget.epochs["fig4_many"]
    rows = []
    for bc in (True, False):

        def make_tx(h, bc=bc):
            return adam_jax.adam(h["lr"], b1=h["b1"], b2=h["b2"], bias_correction=bc)

        losses = train.train_runs(
            model, ds.x, ds.y, make_tx, hp, epochs, seed, on_epoch=lambda: tick(1)
        )
        for r, (b1, b2, log_lr) in enumerate(grid):
            for e in range(epochs + 1):
                rows.append(
                    {
                        "figure": "fig4", "panel": "fig4", "dataset": ds.source, "model": model.name,
                        "optimizer": "adam" if bc else "adam_no_bias_correction",
                        "hyperparameters": f"lr=1e{log_lr} b1={b1} b2={b2} bias_correction={bc}",
                        "learning_rate": _fmt(10.0**log_lr), "beta1": b1, "beta2": b2,
                        "bias_correction": int(bc), "selected": 0, "epoch": e,
                        "loss": repr(float(losses[r, e])),
                    }
                )  # fmt: skip
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    """Write ``rows`` to ``path`` with the columns ``FIELDS``."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    """Read a ``results.csv`` back (numbers as strings, as written)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run(
    figures: Iterable[str],
    budget: Budget,
    seed: int,
    data_dir: str | None,
    tick: Callable[[int], None],
) -> list[dict]:
    """Run the experiments of ``figures``; returns all result rows."""
    figures = list(figures)
    datasets = {
        name: data_lib.load(name, data_dir, seed).subset(budget.max_examples)
        for name in datasets_for(figures)
    }
    if "cifar10" in datasets:
        ds = datasets["cifar10"]
        datasets["cifar10"] = dataclasses.replace(
            ds, x=zca_whiten(ds.x), source=ds.source + ", ZCA-whitened"
        )
    rows: list[dict] = []
    for panel in PANELS:
        if panel.figure in figures:
            rows += run_panel(panel, datasets[panel.dataset], budget, seed, tick)
    if "fig4" in figures:
        rows += run_vae_grid(datasets["mnist"], budget, seed, tick)
    return rows
