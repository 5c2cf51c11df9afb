"""The Section 6 experiments: which model, data, optimizers and grids each figure uses, and the run.

Every optimizer's learning rate is chosen by grid search on the *selection seeds* (``1000, 1001,
...``, disjoint from the verdict seeds): all grid points are trained from the same initialisation
in each selection seed, and the one with the lowest area under the log-cost curve
(:func:`claims.speed`), averaged over the selection seeds, is selected. When it is at an edge of
the grid, the grid is extended past that edge, a bounded number of half-decade steps. The selected
rate is then trained on the *verdict seeds*, whose curves the figures show and the claims judge.
Adam and AdaMax come from adam_jax, the baselines from :mod:`baselines`. Rows go to
``results.csv`` as each group of runs finishes, so an interrupted run keeps them, and
``--resume`` skips them.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

import adam_jax
from adam_jax.tools.paper import baselines, claims, models, train
from adam_jax.tools.paper import data as data_lib
from adam_jax.tools.paper.claims import LABELS  # noqa: F401 (re-exported)

FIGURES = ("fig1", "fig2", "fig3", "fig4")
FIELDS = (
    "figure", "panel", "dataset", "model", "optimizer", "hyperparameters", "learning_rate",
    "beta1", "beta2", "bias_correction", "seed", "stage", "selected", "epoch", "iteration", "loss",
)  # fmt: skip
SELECTION_SEED_BASE = 1000  # selection seeds are 1000, 1001, ...; verdict seeds must differ

# Learning-rate grids (the paper says "dense grid" and gives none), in half-decade steps. Under
# alpha/sqrt(t) (Fig. 1) a grid is moved up a decade. Either way a selection on an edge extends
# the grid past it, up to ``Budget.max_extend`` steps each way.
FULL_GRIDS = {
    "adam": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    "adamax": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    "sgd_nesterov": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    "adagrad": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    "adagrad_inv_sqrt": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    "rmsprop": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    "rmsprop_eps_in_sqrt": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    "adadelta": (0.1, 0.3, 1.0, 3.0),
}
QUICK_GRIDS = {  # half-decade steps, as the full grids, over a narrower range
    "adam": (1e-3, 3e-3, 1e-2, 3e-2),
    "adamax": (2e-3, 6e-3, 2e-2, 6e-2),
    "sgd_nesterov": (1e-2, 3e-2, 1e-1, 3e-1),
    "adagrad": (3e-3, 1e-2, 3e-2, 1e-1),
    "adagrad_inv_sqrt": (3e-3, 1e-2, 3e-2, 1e-1),
    "rmsprop": (3e-4, 1e-3, 3e-3),
    "rmsprop_eps_in_sqrt": (3e-4, 1e-3, 3e-3),
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
    epochs: dict[str, int]  # per panel; "fig3_early" is Fig. 3 left, fig4 uses few/many
    grids: dict[str, tuple[float, ...]]
    seeds: int  # default number of verdict seeds
    selection_seeds: int  # seeds 1000, 1001, ... on which every grid choice is made
    max_extend: int = 2  # grid extensions past each edge
    cnn_channels: tuple[int, int, int] = (64, 64, 128)
    cnn_hidden: int = 1000
    max_examples: int | None = None  # cap on training examples per dataset
    paper_steps: bool = False  # epochs of the paper's iterations (PAPER_STEPS), not of the data's
    cifar_size: int = 8  # the CIFAR-10 stand-in's images: 8 the digits, more up-sampled, coloured
    no_dropout: bool = False  # also run Fig. 1 right and Fig. 3 without dropout
    constant_alpha: bool = False  # also run Fig. 1 with every optimizer at a constant alpha
    imdb_docs: int = 2000  # documents in the generated bag-of-words corpus
    imdb_vocab: int = data_lib.VOCAB  # its words (see data.zipf_corpus for the calibration)
    imdb_label_noise: float = data_lib.LABEL_NOISE  # its flipped labels (the same calibration)


FULL = Budget(
    "full",
    {"fig1_mnist": 45, "fig1_mnist_const": 45, "fig1_imdb": 45, "fig1_imdb_const": 45,
     "fig1_imdb_nodrop": 45, "fig1_imdb_nodrop_const": 45, "fig2": 100, "fig3": 45,
     "fig3_nodrop": 45, "fig3_early": 3, "fig4_few": 10, "fig4_many": 100},
    FULL_GRIDS,
    seeds=5,
    selection_seeds=3,
    imdb_docs=25_000,
    imdb_label_noise=0.05,  # chosen by the rule in data.zipf_corpus (results/RULES.md)
    paper_steps=True,
    cifar_size=32,
    no_dropout=True,
    constant_alpha=True,
)  # fmt: skip
# The paper's iterations per epoch: minibatches of 128 over MNIST's 60,000 images, IMDB's 25,000
# reviews and CIFAR-10's 50,000 images (rounded up). A full run's "epoch" is this many iterations
# on whatever data it uses: on the 1,797 digits one MNIST epoch is 33.5 passes.
PAPER_STEPS = {"mnist": 469, "imdb": 196, "cifar10": 391}
QUICK = Budget(
    "quick",
    {"fig1_mnist": 15, "fig1_imdb": 10, "fig2": 8, "fig3": 6, "fig3_early": 3,
     "fig4_few": 3, "fig4_many": 15},
    QUICK_GRIDS,
    seeds=3,
    selection_seeds=2,
    imdb_docs=4000,
    imdb_vocab=1000,
    cnn_channels=(16, 16, 32),
    cnn_hidden=250,
)  # fmt: skip
TINY = Budget(
    "tiny",
    {"fig1_mnist": 2, "fig1_imdb": 2, "fig2": 2, "fig3": 2, "fig3_early": 1,
     "fig4_few": 1, "fig4_many": 2},
    TINY_GRIDS,
    seeds=2,
    selection_seeds=1,
    max_extend=0,
    cnn_channels=(4, 4, 8),
    cnn_hidden=16,
    max_examples=256,
)  # fmt: skip
BUDGETS = {b.name: b for b in (FULL, QUICK, TINY)}


@functools.cache
def make_optimizer(name: str, schedule: bool) -> train.MakeTx:
    """A function of the (traced) hyperparameters ``{"lr": ...}`` giving the optimizer ``name``.

    With ``schedule`` the step size is alpha/sqrt(t) (Section 6.1). One function per (name,
    schedule), so its compiled training epoch is reused.
    """

    def lr(h):
        return adam_jax.inverse_sqrt_schedule(h["lr"]) if schedule else h["lr"]

    makers: dict[str, Callable] = {
        "adam": lambda h: adam_jax.adam(lr(h)),
        "adamax": lambda h: adam_jax.adamax(lr(h)),
        "sgd_nesterov": lambda h: baselines.sgd_nesterov(lr(h)),
        "adagrad": lambda h: baselines.adagrad(lr(h)),
        "adagrad_inv_sqrt": lambda h: baselines.adagrad(lr(h)),
        "rmsprop": lambda h: baselines.rmsprop(lr(h)),
        "rmsprop_eps_in_sqrt": lambda h: baselines.rmsprop_eps_in_sqrt(lr(h)),
        "adadelta": lambda h: baselines.adadelta(lr(h)),
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
    dropout: bool = True  # False: the paper's curves without dropout (full run only)
    constant_alpha: bool = False  # True: Section 6.1's alpha/sqrt(t) left out (full run only)


PANELS = (
    Panel("fig1", "fig1_mnist", "mnist",
          ("adam", "sgd_nesterov", "adagrad", "adagrad_inv_sqrt", "adamax"), True),
    Panel("fig1", "fig1_mnist_const", "mnist",
          ("adam", "sgd_nesterov", "adagrad", "adamax"), constant_alpha=True),
    Panel("fig1", "fig1_imdb", "imdb",
          ("adam", "adagrad", "adagrad_inv_sqrt", "rmsprop", "sgd_nesterov", "adamax"), True),
    Panel("fig1", "fig1_imdb_const", "imdb",
          ("adam", "adagrad", "rmsprop", "sgd_nesterov", "adamax"), constant_alpha=True),
    Panel("fig1", "fig1_imdb_nodrop", "imdb",
          ("adam", "adagrad", "adagrad_inv_sqrt", "rmsprop", "sgd_nesterov"), True, dropout=False),
    Panel("fig1", "fig1_imdb_nodrop_const", "imdb",
          ("adam", "adagrad", "rmsprop", "sgd_nesterov"), dropout=False, constant_alpha=True),
    Panel("fig2", "fig2", "mnist", ("adam", "adagrad", "rmsprop", "rmsprop_eps_in_sqrt",
                                    "sgd_nesterov", "adadelta", "adamax")),
    Panel("fig3", "fig3", "cifar10", ("adam", "adagrad", "sgd_nesterov", "adamax")),
    Panel("fig3", "fig3_nodrop", "cifar10", ("adam", "adagrad", "sgd_nesterov"), dropout=False),
)  # fmt: skip


def panels(budget: Budget) -> tuple[Panel, ...]:
    """The curve panels ``budget`` runs (those without dropout, and Fig. 1's with every optimizer
    at a constant alpha, only when it says so)."""
    return tuple(
        p
        for p in PANELS
        if (p.dropout or budget.no_dropout) and (not p.constant_alpha or budget.constant_alpha)
    )


def build_model(panel: str, ds: data_lib.Dataset, budget: Budget) -> models.Model:
    """The model of a panel for dataset ``ds`` (input size taken from the data). A ``_const``
    panel (Fig. 1 with every optimizer at a constant alpha) trains its twin's model."""
    panel = panel.removesuffix("_const")
    if panel == "fig1_mnist":
        return models.logistic_regression(ds.x.shape[1], ds.num_classes, weight_decay=1e-4)
    if panel in ("fig1_imdb", "fig1_imdb_nodrop"):
        rate = 0.5 if panel == "fig1_imdb" else 0.0
        return models.logistic_regression(ds.x.shape[1], 2, weight_decay=1e-4, input_dropout=rate)
    if panel == "fig2":
        return models.mlp(ds.x.shape[1], ds.num_classes)
    if panel in ("fig3", "fig3_nodrop"):
        rates = (0.2, 0.5) if panel == "fig3" else (0.0, 0.0)
        return models.cnn(ds.x.shape[1:], ds.num_classes, budget.cnn_channels, budget.cnn_hidden,
                          *rates)  # fmt: skip
    if panel == "fig4":
        return models.vae(ds.x.shape[1])
    raise ValueError(f"unknown panel {panel!r}")


def datasets_for(figures: Iterable[str]) -> list[str]:
    """Datasets needed by ``figures``."""
    wanted = set(figures)
    names = [p.dataset for p in PANELS if p.figure in wanted]
    names += ["mnist"] if "fig4" in wanted else []
    return list(dict.fromkeys(names))


def scheduled(panel: Panel, optimizer: str) -> bool:
    """Whether ``optimizer`` runs with alpha/sqrt(t) in ``panel``: in Fig. 1 (Section 6.1) every
    optimizer; AdaGrad runs both ways, as ``adagrad_inv_sqrt`` (Section 6.1 read literally) and as
    ``adagrad`` at a constant alpha (its accumulated squared gradients already shrink its steps
    like 1/sqrt(t), Section 5, so decaying alpha too gives 1/t steps)."""
    return panel.schedule and optimizer != "adagrad"


def selection_seeds(budget: Budget) -> list[int]:
    """The seeds every grid choice is made on: ``SELECTION_SEED_BASE`` and the next ones."""
    return list(range(SELECTION_SEED_BASE, SELECTION_SEED_BASE + budget.selection_seeds))


def grid_for(optimizer: str, budget: Budget, schedule: bool) -> tuple[float, ...]:
    """The starting learning rates for ``optimizer``. Under alpha/sqrt(t) the step shrinks 10x by
    t = 100, so the grid is moved up a decade."""
    grid = budget.grids[optimizer]
    return tuple(float(f"{10 * g:.3g}") for g in grid) if schedule else grid


def extend_grid(grid: tuple[float, ...], up: bool) -> float:
    """The next half-decade point past the top (``up``) or bottom of ``grid``: steps alternate
    x3 and x10/3 (1e-3, 3e-3, 1e-2, ...), continuing the grid's own pattern."""
    if len(grid) < 2:
        ratio = 3.0
    else:
        last = grid[-1] / grid[-2] if up else grid[1] / grid[0]
        ratio = 10 / 3 if abs(last - 3.0) < 0.1 else 3.0
    return float(f"{(grid[-1] * ratio if up else grid[0] / ratio):.3g}")


def work_units(figures: Iterable[str], budget: Budget, seeds: int = 1) -> int:
    """Epochs of single runs the starting grids (on the selection seeds) and the selected rates
    (on ``seeds`` verdict seeds) need: the progress bar's total; grid extensions add to it as they
    happen."""
    total = 0
    for p in panels(budget):
        if p.figure in set(figures):
            grids = sum(len(grid_for(o, budget, scheduled(p, o))) for o in p.optimizers)
            total += (grids * budget.selection_seeds + len(p.optimizers) * seeds) * (
                budget.epochs[p.panel]
            )
    if "fig4" in set(figures):  # one vectorised call per (seed, bias correction)
        total += 2 * budget.epochs["fig4_many"] * (seeds + budget.selection_seeds)
    return total


def _fmt(value: float) -> str:
    return f"{value:.6g}"


class Progress:
    """What the runner reports to: ``update(n)`` after n run-epochs, ``grow(n)`` when a grid is
    extended. A tqdm bar fits (``total`` is changed in place). With ``file``, the counts so far
    ("done grown") are also written there, for a parent process running figures in parallel."""

    def __init__(self, bar=None, file: Path | None = None) -> None:
        self.bar, self.file = bar, file
        self.done = self.grown = 0

    def update(self, n: int) -> None:
        from adam_jax.tools.interrupt import check_interrupted

        check_interrupted()  # a Ctrl-C whose exception a callback swallowed
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        self._write()

    def grow(self, n: int) -> None:
        self.grown += n
        if self.bar is not None:
            self.bar.total += n
            self.bar.refresh()
        self._write()

    def _write(self) -> None:
        if self.file is not None:
            tmp = self.file.with_suffix(".tmp")
            tmp.write_text(f"{self.done} {self.grown}\n")
            tmp.replace(self.file)


RunKey = tuple[str, str, str, str]  # (panel, optimizer, hyperparameters, seed)


def run_key(row: dict) -> RunKey:
    """The run a row belongs to (Fig. 3's per-iteration rows belong to their ``fig3`` run)."""
    panel = row["panel"].removesuffix("_iter")
    return (panel, row["optimizer"], row["hyperparameters"], str(row["seed"]))


class Results:
    """``results.csv`` written as groups of runs finish (one write per group, so Ctrl-C keeps
    every finished group). With ``resume``, the finished runs already in the file are kept and
    handed back instead of being trained again; anything unfinished is dropped. A run trained
    again (a Fig. 4 run of ``--few-epochs-only`` continued to all its epochs) was appended after
    its earlier rows: where a run's row repeats one already read (the same epoch and iteration),
    the later rows replace the earlier. With ``figures``, the rows of other figures already in
    the file stay in it (``others``), resumed or not."""

    def __init__(self, path: Path, resume: bool, figures: Iterable[str] | None = None) -> None:
        self.path = path
        self.on_add: Callable[[], None] | None = None  # called after each group is written
        self.kept: dict[RunKey, list[dict]] = {}
        self.others: list[dict] = []
        seen: dict[RunKey, set[tuple[str, str]]] = {}
        rows = read_results(path) if path.is_file() and (resume or figures is not None) else []
        for row in rows:
            if figures is not None and row["figure"] not in figures:
                self.others.append(row)
            elif resume:
                key, at = run_key(row), (row["epoch"], row["iteration"])
                if at in seen.setdefault(key, set()):  # trained again: the later rows stand
                    self.kept[key], seen[key] = [], set()
                seen[key].add(at)
                self.kept.setdefault(key, []).append(row)
        write_csv(self.others + [r for rows in self.kept.values() for r in rows], path)
        self.finished_runs = 0

    def take(self, keys: list[RunKey], last_epoch: int) -> list[dict] | None:
        """The kept rows of the runs ``keys`` if every one of them finished (has its
        ``last_epoch`` row), else None (they are trained again, as one group)."""
        rows = [self.kept.get(k, []) for k in keys]
        if all(
            any(r["epoch"] == str(last_epoch) and not r["iteration"] for r in rs) for rs in rows
        ):
            self.finished_runs += len(keys)
            return [r for rs in rows for r in rs]
        for k in keys:
            self.kept.pop(k, None)
        return None

    def add(self, rows: list[dict]) -> None:
        """Append ``rows`` (a finished group) to the file in one write."""
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=FIELDS).writerows(rows)
        with open(self.path, "a", newline="") as f:
            f.write(buf.getvalue())
            f.flush()
        self.finished_runs += len({run_key(r) for r in rows})
        if self.on_add is not None:
            self.on_add()


def run_speed(rows: list[dict]) -> float:
    """The selection measure of one run's per-epoch rows: :func:`claims.speed`, the area under
    the log-cost curve."""
    return claims.speed(
        [(int(r["epoch"]), claims.as_cost(r["loss"])) for r in rows if not r["iteration"]]
    )


def select(scores: dict[float, list[float]]) -> float:
    """The learning rate with the lowest score averaged over seeds (non-finite: +inf)."""
    return min(sorted(scores), key=lambda lr: float(np.mean(scores[lr])))


def run_panel(
    panel: Panel,
    ds: data_lib.Dataset,
    budget: Budget,
    seeds: list[int],
    results: Results,
    progress: Progress,
    masks_dir: Path | None = None,
) -> list[dict]:
    """Grid-search every optimizer of ``panel`` on the selection seeds, then train the selected
    rate on the verdict ``seeds``; one row per (run, epoch), plus, for Fig. 3, one row per
    iteration of the first epochs (panel ``fig3_iter``). With ``masks_dir``, input dropout masks
    are drawn once per seed and kept there for every optimizer (:class:`train.DropoutMasks`)."""
    model = build_model(panel.panel, ds, budget)
    epochs = budget.epochs[panel.panel]
    step_epochs = budget.epochs["fig3_early"] if panel.figure == "fig3" else 0
    vectorize = panel.figure != "fig3"
    per_epoch = PAPER_STEPS[ds.name] if budget.paper_steps else None
    chosen_on = selection_seeds(budget)
    rows = []
    for opt in panel.optimizers:
        sched = scheduled(panel, opt)
        tag = " schedule=alpha/sqrt(t)" if sched else ""

        def group(lrs: tuple[float, ...], seed: int, stage: str, opt=opt, sched=sched,
                  tag=tag) -> list[dict]:  # fmt: skip
            keys = [(panel.panel, opt, f"lr={_fmt(lr)}{tag}", str(seed)) for lr in lrs]
            kept = results.take(keys, epochs)
            if kept is not None:
                progress.update(len(lrs) * epochs)
                return kept
            lr_arr = np.asarray(lrs, np.float64)
            losses, step_losses = train.train_runs_with_steps(
                model, ds.x, ds.y, make_optimizer(opt, sched), {"lr": lr_arr}, epochs, seed,
                on_epoch=functools.partial(progress.update, len(lrs) if vectorize else 1),
                vectorize=vectorize, step_epochs=step_epochs, steps_per_epoch=per_epoch,
                masks_dir=masks_dir,
            )  # fmt: skip
            steps = per_epoch or len(ds.y) // train.BATCH_SIZE
            new = []
            for r, lr in enumerate(lrs):
                base = {
                    "figure": panel.figure, "dataset": ds.source, "model": model.name,
                    "optimizer": opt, "hyperparameters": keys[r][2], "learning_rate": _fmt(lr),
                    "beta1": "", "beta2": "", "bias_correction": "", "seed": seed,
                    "stage": stage, "selected": int(stage == claims.VERDICT),
                }  # fmt: skip
                for i, loss in enumerate(step_losses[r]):
                    new.append({**base, "panel": f"{panel.panel}_iter", "epoch": i // steps + 1,
                                "iteration": i + 1, "loss": repr(float(loss))})  # fmt: skip
                for e in range(epochs + 1):
                    new.append({**base, "panel": panel.panel, "epoch": e, "iteration": "",
                                "loss": repr(float(losses[r, e]))})  # fmt: skip
            new = [{k: str(v) for k, v in row.items()} for row in new]
            results.add(new)
            return new

        grid = grid_for(opt, budget, sched)
        by_lr: dict[float, list[dict]] = {}
        pending = list(grid)
        extended = {True: 0, False: 0}
        while pending:
            per_seed = [group(tuple(pending), seed, claims.SELECTION) for seed in chosen_on]
            for lr in pending:
                hp = f"lr={_fmt(lr)}{tag}"
                by_lr[lr] = [r for rs in per_seed for r in rs if r["hyperparameters"] == hp]
            grid = tuple(sorted(by_lr))
            best = select(
                {lr: [run_speed([r for r in rs if r["seed"] == str(s) and r["panel"] == panel.panel])
                      for s in chosen_on]
                 for lr, rs in by_lr.items()}
            )  # fmt: skip
            pending = []
            for up, edge in ((True, grid[-1]), (False, grid[0])):
                if best == edge and extended[up] < budget.max_extend:
                    extended[up] += 1
                    pending = [extend_grid(grid, up)]
                    progress.grow(len(chosen_on) * epochs)
                    break
        for lr in grid:
            for r in by_lr[lr]:
                r["selected"] = str(int(lr == best))
            rows += by_lr[lr]
        for seed in seeds:
            rows += group((best,), seed, claims.VERDICT)
    return rows


def run_vae_grid(
    ds: data_lib.Dataset,
    budget: Budget,
    seeds: list[int],
    results: Results,
    progress: Progress,
) -> list[dict]:
    """Fig. 4: the VAE over the paper's full (beta1, beta2, alpha) grid, with and without bias
    correction, on the selection seeds and then the verdict ``seeds``; losses after ``fig4_few``
    and ``fig4_many`` epochs come from one run."""
    model = build_model("fig4", ds, budget)
    grid = list(itertools.product(VAE_BETA1, VAE_BETA2, VAE_LOG10_ALPHA))
    hp = {
        "b1": np.array([g[0] for g in grid]),
        "b2": np.array([g[1] for g in grid]),
        "lr": np.array([10.0 ** g[2] for g in grid]),
    }
    epochs = budget.epochs["fig4_many"]
    rows = []
    stages = {s: claims.SELECTION for s in selection_seeds(budget)}
    stages |= {s: claims.VERDICT for s in seeds}
    for seed, bc in itertools.product(stages, (True, False)):
        name = "adam" if bc else "adam_no_bias_correction"
        keys = [
            ("fig4", name, f"lr=1e{a} b1={b1} b2={b2} bias_correction={bc}", str(seed))
            for b1, b2, a in grid
        ]
        kept = results.take(keys, epochs)
        if kept is not None:
            progress.update(epochs)
            rows += kept
            continue
        losses, _ = train.train_runs_with_steps(
            model, ds.x, ds.y, _vae_optimizer(bc), hp, epochs, seed,
            on_epoch=lambda: progress.update(1),
            steps_per_epoch=PAPER_STEPS[ds.name] if budget.paper_steps else None,
        )  # fmt: skip
        new = []
        for r, (b1, b2, log_lr) in enumerate(grid):
            for e in range(epochs + 1):
                new.append(
                    {
                        "figure": "fig4", "panel": "fig4", "dataset": ds.source, "model": model.name,
                        "optimizer": name, "hyperparameters": keys[r][2],
                        "learning_rate": _fmt(10.0**log_lr), "beta1": b1, "beta2": b2,
                        "bias_correction": int(bc), "seed": seed, "stage": stages[seed],
                        "selected": 0, "epoch": e,
                        "iteration": "", "loss": repr(float(losses[r, e])),
                    }
                )  # fmt: skip
        new = [{k: str(v) for k, v in row.items()} for row in new]
        results.add(new)
        rows += new
    return rows


@functools.cache
def _vae_optimizer(bc: bool) -> train.MakeTx:
    def make_tx(h):
        return adam_jax.adam(h["lr"], b1=h["b1"], b2=h["b2"], bias_correction=bc)

    return make_tx


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


class ResultsFileError(ValueError):
    """A ``results.csv`` that this package did not write, or that was damaged since."""


def read_results(path: Path) -> list[dict]:
    """:func:`read_csv`, checked: the columns ``FIELDS``, every row complete, numbers where
    numbers belong. Raises :class:`ResultsFileError` naming the file,
    the line and what is wrong."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in FIELDS if c not in (reader.fieldnames or ())]
            if missing:
                raise ResultsFileError(
                    f"{path} lacks the column{'s' * (len(missing) > 1)} {', '.join(missing)} "
                    f"(its header: {','.join(reader.fieldnames or []) or 'none'})"
                )
            rows = []
            for row in reader:
                line = reader.line_num
                if None in row or None in row.values():
                    raise ResultsFileError(f"{path}, line {line}: not {len(FIELDS)} fields")
                try:
                    int(row["seed"]), int(row["epoch"]), float(row["loss"])
                except ValueError:
                    raise ResultsFileError(
                        f"{path}, line {line}: seed {row['seed']!r}, epoch {row['epoch']!r} and "
                        f"loss {row['loss']!r} are not all numbers"
                    ) from None
                rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ResultsFileError(f"{path} cannot be read as CSV ({err})") from None
    return rows


def in_figure_order(rows: list[dict]) -> list[dict]:
    """``rows`` figure after figure (in ``FIGURES`` order, unknown figures last), each figure's
    rows in their order."""
    order = {f: i for i, f in enumerate(FIGURES)}
    return sorted(rows, key=lambda r: order.get(r["figure"], len(FIGURES)))


def rows_per_seed(figures: Iterable[str], budget: Budget) -> int:
    """Rows of ``results.csv`` one seed adds over the starting grids (grid extensions and Fig. 3's
    per-iteration rows add more): what a run holds in memory grows by this much per seed."""
    figures = set(figures)
    total = sum(
        len(grid_for(o, budget, scheduled(p, o))) * (budget.epochs[p.panel] + 1)
        for p in panels(budget)
        if p.figure in figures
        for o in p.optimizers
    )
    if "fig4" in figures:
        runs = len(VAE_BETA1) * len(VAE_BETA2) * len(VAE_LOG10_ALPHA)
        total += 2 * runs * (budget.epochs["fig4_many"] + 1)  # with and without bias correction
    return total


ROW_BYTES = 1000  # a result row in memory: a dict of 15 short strings (measured: 1.15 kB)


def load_data(figures: Iterable[str], budget: Budget, data_dir: str | None) -> dict:
    """The datasets ``figures`` need (CIFAR-10 ZCA-whitened), loaded before any training."""
    datasets = {
        name: data_lib.load(
            name,
            data_dir,
            budget.imdb_docs,
            budget.imdb_vocab,
            budget.cifar_size,
            imdb_label_noise=budget.imdb_label_noise,
        ).subset(budget.max_examples)
        for name in datasets_for(figures)
    }
    if "cifar10" in datasets:
        ds = datasets["cifar10"]
        datasets["cifar10"] = dataclasses.replace(
            ds, x=zca_whiten(ds.x), source=ds.source + ", ZCA-whitened"
        )
    return datasets


def run(
    figures: Iterable[str],
    budget: Budget,
    seeds: list[int],
    datasets: dict,
    results: Results,
    progress: Progress,
    seconds: dict[str, float] | None = None,
    cpu_seconds: dict[str, float] | None = None,
) -> list[dict]:
    """Run the experiments of ``figures`` over ``seeds``; returns all result rows, in the same
    order whether or not some came from ``results`` (a resumed run). The training time of each
    figure is added to ``seconds`` (wall clock) and ``cpu_seconds`` (this process's CPU time,
    which a machine shared with other work does not inflate), also when Ctrl-C stops it; they are
    current whenever ``results.on_add`` is called. Input
    dropout masks are kept in a temporary directory while it runs (the full run's Fig. 1 right:
    1.4 GB per seed)."""
    figures = list(figures)
    seconds = {} if seconds is None else seconds
    cpu_seconds = {} if cpu_seconds is None else cpu_seconds
    rows: list[dict] = []
    after_add = results.on_add
    with tempfile.TemporaryDirectory(prefix="adam-jax-dropout-masks-") as masks_dir:
        for figure in FIGURES:
            if figure not in figures:
                continue
            mark = [time.perf_counter(), time.process_time()]

            def charge(record: bool = True, figure: str = figure, mark: list = mark) -> None:
                """Add the time since the last charge to ``figure``'s. As ``results.on_add``
                (each group written) it then calls the caller's hook, which may record them."""
                now, cpu_now = time.perf_counter(), time.process_time()
                seconds[figure] = seconds.get(figure, 0.0) + now - mark[0]
                cpu_seconds[figure] = cpu_seconds.get(figure, 0.0) + cpu_now - mark[1]
                mark[:] = [now, cpu_now]
                if record and after_add is not None:
                    after_add()

            results.on_add = charge
            try:
                for panel in panels(budget):
                    if panel.figure == figure:
                        ds = datasets[panel.dataset]
                        rows += run_panel(
                            panel, ds, budget, seeds, results, progress, Path(masks_dir)
                        )
                if figure == "fig4":
                    rows += run_vae_grid(datasets["mnist"], budget, seeds, results, progress)
            finally:  # an interrupted sitting's time counts too: run.json sums the sittings
                charge(record=False)
                results.on_add = after_add
    return rows
