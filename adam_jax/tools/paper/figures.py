"""Figures laid out like the paper's Figures 1-4, drawn from the rows of ``results.csv``.

Curves are the mean over the verdict seeds of the learning rate selected on the selection seeds,
with a band from the lowest to the highest seed. Training costs are drawn on a logarithmic axis
(the paper's Fig. 1 is linear, but its linear axis, set by the first epoch's cost, hides the region
where the curves differ); Fig. 4 is linear against log10(α). Titles name the data actually used;
a caption under every figure says what was run: quick or full, the seeds, how α was chosen.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from adam_jax.tools.paper.claims import LABELS
from adam_jax.tools.paper.runner import VAE_BETA2

STYLES = {
    "adam": ("tab:red", "-"),
    "adamax": ("tab:brown", "--"),
    "sgd_nesterov": ("tab:blue", "-"),
    "adagrad": ("tab:green", "-"),
    "adagrad_inv_sqrt": ("tab:green", ":"),
    "rmsprop": ("tab:purple", "-"),
    "rmsprop_eps_in_sqrt": ("tab:purple", ":"),
    "adadelta": ("tab:orange", "-"),
}


def data_name(source: str) -> str:
    """A short name of the data actually used: "sklearn digits (MNIST stand-in)", or "MNIST"."""
    if "standing in for" not in source:
        return source.split(" (")[0]
    stand_in = source.split("standing in for ")[1].split(",")[0]
    return f"{source.split(' (')[0]} ({stand_in} stand-in)"


def seed_curves(
    rows: list[dict], panel: str, x_field: str = "epoch"
) -> dict[str, tuple[float, np.ndarray, np.ndarray]]:
    """optimizer -> (selected learning rate, x, losses of shape (seeds, len(x))) for ``panel``."""
    acc: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    lrs = {}
    for r in rows:
        if r["panel"] == panel and r["selected"] == "1" and r["stage"] == "verdict":
            acc[r["optimizer"]][r["seed"]].append((int(r[x_field]), float(r["loss"])))
            lrs[r["optimizer"]] = float(r["learning_rate"])
    out = {}
    for opt, by_seed in acc.items():
        curves = [sorted(pts) for _, pts in sorted(by_seed.items())]
        x = np.array([p[0] for p in curves[0]])
        out[opt] = (lrs[opt], x, np.array([[p[1] for p in c] for c in curves]))
    return out


def _epoch_label(panel: str, paper: bool) -> str:
    """The x-axis: epochs of the data used, or of the paper's iterations per epoch (full run)."""
    if not paper:
        return "iterations over entire dataset (epochs)"
    from adam_jax.tools.paper.runner import PANELS, PAPER_STEPS

    dataset = next(p.dataset for p in PANELS if p.panel == panel.removesuffix("_iter"))
    return f"paper-equivalent epochs ({PAPER_STEPS[dataset]} iterations of 128 each)"


def _curves_axis(ax, rows, panel, title, log, x_field="epoch", per_epoch=1, paper=False):
    dataset = next((r["dataset"] for r in rows if r["panel"] == panel), "")
    for opt, (lr, x, losses) in seed_curves(rows, panel, x_field).items():
        color, style = STYLES[opt]
        x = (x - 1) / per_epoch if x_field == "iteration" else x  # iteration 1: before step 1
        ax.plot(x, losses.mean(0), style, color=color, lw=1.2, label=f"{LABELS[opt]} (α={lr:g})")
        if len(losses) > 1:
            ax.fill_between(x, losses.min(0), losses.max(0), color=color, alpha=0.18, lw=0)
    if log:
        ax.set_yscale("log")
        curves = seed_curves(rows, panel, x_field).values()
        finite = [v for _, _, ys in curves for v in ys.ravel() if np.isfinite(v) and v > 0]
        if finite:  # from just below the lowest cost to 1.1x the initial: diverged runs leave
            start = max(ys[:, 0].max() for _, _, ys in curves)
            ax.set_ylim(min(finite) * 0.8, 1.1 * start if np.isfinite(start) else max(finite))
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.1, 0.2, 0.5, 1, 2, ...
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(_epoch_label(panel, paper), fontsize=8)
    ax.set_ylabel("training cost")
    ax.set_title(f"{data_name(dataset)}\n{title}", fontsize=9)
    ax.legend(fontsize=7)
    return dataset


CHOSEN = (
    "Each optimizer's α was chosen on the selection seeds (lowest area under the log-cost "
    "curve); curves: mean over the verdict seeds, band: lowest to highest seed; the y-axis is "
    "clipped at 1.1x the initial cost."
)


def _save(fig, path: Path, note: str, data_note: str, chosen: str = CHOSEN) -> Path:
    fig.text(
        0.5, 0.005, f"What was run: {note}. {chosen} Data: {data_note}",
        ha="center", va="bottom", fontsize=7, wrap=True,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure1(rows: list[dict], out: Path, note: str, paper: bool = False) -> Path:
    """Fig. 1: logistic regression, MNIST-like (left) and bag-of-words (right), and the variants
    the run made (no dropout; every optimizer at a constant α); log scale. With the constant-α
    variants, each row pairs a panel (α/√t) with its constant-α twin: the digits, then the corpus
    with and without dropout."""
    present = {r["panel"] for r in rows}
    titles = {
        "fig1_mnist": "logistic regression, α/√t (AdaGrad also at constant α)",
        "fig1_mnist_const": "logistic regression, every optimizer at a constant α",
        "fig1_imdb": "bag-of-words, 50% input dropout, α/√t (AdaGrad also constant)",
        "fig1_imdb_const": "bag-of-words, 50% input dropout, every optimizer at a constant α",
        "fig1_imdb_nodrop": "bag-of-words, no dropout, α/√t (AdaGrad also constant)",
        "fig1_imdb_nodrop_const": "bag-of-words, no dropout, every optimizer at a constant α",
    }
    bases = [p for p in ("fig1_mnist", "fig1_imdb", "fig1_imdb_nodrop") if p in present]
    bases = bases or ["fig1_mnist", "fig1_imdb"]  # an empty run still draws its two panels
    if any(f"{b}_const" in present for b in bases):
        grid = [[b, f"{b}_const"] for b in bases]
    else:
        grid = [bases]
    cols = max(len(row) for row in grid)
    fig, axes = plt.subplots(len(grid), cols, figsize=(5.5 * cols, 4.4 * len(grid)), squeeze=False)
    drawn = {}
    for ax_row, row in zip(axes, grid, strict=True):
        for ax, panel in zip(ax_row, row, strict=True):
            if panel in present or panel in ("fig1_mnist", "fig1_imdb"):
                drawn[panel] = _curves_axis(ax, rows, panel, titles[panel], log=True, paper=paper)
            else:
                ax.set_visible(False)
    fig.suptitle(f"Fig. 1 ({note})", fontsize=10)
    first, second = ("top", "below") if len(grid) > 1 else ("left", "right")
    data_note = f"{first}: {drawn['fig1_mnist']}; {second}: {drawn['fig1_imdb']}"
    return _save(fig, out / "fig1.png", note, data_note)


def figure2(rows: list[dict], out: Path, note: str, paper: bool = False) -> Path:
    """Fig. 2a: MLP with dropout on MNIST-like data; log scale."""
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    d = _curves_axis(ax, rows, "fig2", "multilayer neural network + dropout", log=True,
                     paper=paper)  # fmt: skip
    fig.suptitle(f"Fig. 2a ({note})", fontsize=10)
    return _save(fig, out / "fig2.png", note, d)


def figure3(rows: list[dict], out: Path, note: str, early_epochs: int, paper: bool = False) -> Path:
    """Fig. 3: CNN; left the minibatch cost at every iteration of the first ``early_epochs``
    epochs, right the training cost after every epoch; both log scale. A second row without
    dropout when it was run."""
    variants = [("fig3", "+ dropout")]
    if any(r["panel"] == "fig3_nodrop" for r in rows):
        variants.append(("fig3_nodrop", "no dropout"))
    fig, axes = plt.subplots(len(variants), 2, figsize=(11, 4.4 * len(variants)), squeeze=False)
    d = ""
    for row, (panel, what) in enumerate(variants):
        it = f"{panel}_iter"
        steps = max((int(r["iteration"]) for r in rows if r["panel"] == it), default=1)
        d = _curves_axis(
            axes[row, 0], rows, it,
            f"ConvNet {what}, first {early_epochs} epochs (cost per iteration)",
            log=True, x_field="iteration", per_epoch=max(1, steps // max(1, early_epochs)),
            paper=paper,
        ) or d  # fmt: skip
        _curves_axis(axes[row, 1], rows, panel, f"ConvNet {what}, all epochs", log=True,
                     paper=paper)  # fmt: skip
    fig.suptitle(f"Fig. 3 ({note})", fontsize=10)
    return _save(fig, out / "fig3.png", note, d)


def vae_losses(
    rows: list[dict], epoch: int
) -> dict[tuple[bool, float, float], tuple[np.ndarray, np.ndarray]]:
    """(bias_correction, beta1, beta2) -> (log10 alpha, loss after ``epoch`` epochs, shape
    (seeds, alphas))."""
    acc: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["panel"] == "fig4" and int(r["epoch"]) == epoch and r["stage"] == "verdict":
            key = (bool(int(r["bias_correction"])), float(r["beta1"]), float(r["beta2"]))
            acc[key][r["seed"]].append((np.log10(float(r["learning_rate"])), float(r["loss"])))
    out = {}
    for key, by_seed in acc.items():
        curves = [sorted(pts) for _, pts in sorted(by_seed.items())]
        out[key] = (
            np.array([p[0] for p in curves[0]]),
            np.array([[p[1] for p in c] for c in curves]),
        )
    return out


def figure4(
    rows: list[dict], out: Path, note: str, few: int, many: int | None, paper: bool = False
) -> Path:
    """Fig. 4: VAE loss vs log10(alpha); columns beta2, rows after ``few`` / ``many`` epochs
    (only ``few`` when ``many`` is None); red = with bias correction, green = without; solid
    beta1 = 0.9, dashed beta1 = 0."""
    epochs = (few,) if many is None else (few, many)
    fig, axes = plt.subplots(
        len(epochs), 3, figsize=(12, 0.6 + 3.1 * len(epochs)), sharex=True, squeeze=False
    )
    data_note = next((r["dataset"] for r in rows if r["panel"] == "fig4"), "")
    for i, epoch in enumerate(epochs):
        curves = vae_losses(rows, epoch)
        finite = [v for _, ys in curves.values() for v in ys.ravel() if np.isfinite(v)]
        # unstable runs reach 1e9: the scale follows the typical run (twice the median loss),
        # and anything above it, or diverged, is drawn at the top edge
        bottom = min(finite) * 0.95 if finite else 0.0
        top = max(2.0 * float(np.median(finite)), bottom * 1.5) if finite else 1.0
        for j, b2 in enumerate(VAE_BETA2):
            ax = axes[i, j]
            for bc, color in ((True, "tab:red"), (False, "tab:green")):
                for b1, style in ((0.9, "-"), (0.0, "--")):
                    if (bc, b1, b2) not in curves:
                        continue
                    x, ys = curves[(bc, b1, b2)]
                    ys = np.where(np.isfinite(ys), np.minimum(ys, top), top)  # diverged: at top
                    ax.plot(x, ys.mean(0), style, color=color, marker="o", ms=3)
                    if len(ys) > 1:
                        ax.fill_between(x, ys.min(0), ys.max(0), color=color, alpha=0.15, lw=0)
            ax.set_ylim(bottom, top)
            what = "paper-equivalent epochs" if paper else "epochs"
            ax.set_title(f"β2={b2}, after {epoch} {what}", fontsize=9)
            ax.set_xlabel("log10(α)")
            if j == 0:
                ax.set_ylabel("loss (negative ELBO)")
    handles = [
        Line2D([], [], color="tab:red", marker="o", ms=3, label="with bias correction (Adam)"),
        Line2D([], [], color="tab:green", marker="o", ms=3, label="without (RMSProp + momentum)"),
        Line2D([], [], color="black", ls="-", label="β1 = 0.9 (solid)"),
        Line2D([], [], color="black", ls="--", label="β1 = 0 (dashed)"),
    ]
    axes[0, 0].legend(handles=handles, fontsize=7)
    fig.suptitle(f"Fig. 4: VAE on {data_name(data_note)}\n({note})", fontsize=10)
    return _save(
        fig, out / "fig4.png", note,
        data_note + "; losses above twice the median, and diverged runs, drawn at the top edge",
        "Every (β1, β2, α) of the paper's grid, with and without bias correction: the mean over "
        "the verdict seeds, band: lowest to highest seed.",
    )  # fmt: skip
