"""Figures laid out like the paper's Figures 1-4, drawn from the rows of ``results.csv``."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from adam_jax.paper.runner import LABELS, VAE_BETA2

STYLES = {
    "adam": ("tab:red", "-"),
    "adamax": ("tab:brown", "--"),
    "sgd_nesterov": ("tab:blue", "-"),
    "adagrad": ("tab:green", "-"),
    "rmsprop": ("tab:purple", "-"),
    "adadelta": ("tab:orange", "-"),
}


def selected_curves(
    rows: list[dict], panel: str
) -> dict[str, tuple[float, np.ndarray, np.ndarray]]:
    """optimizer -> (learning rate, epochs, losses) of the grid point selected for ``panel``."""
    curves: dict[str, list] = defaultdict(list)
    lrs = {}
    for r in rows:
        if r["panel"] == panel and int(r["selected"]):
            curves[r["optimizer"]].append((int(r["epoch"]), float(r["loss"])))
            lrs[r["optimizer"]] = float(r["learning_rate"])
    out = {}
    for opt, pts in curves.items():
        pts.sort()
        out[opt] = (lrs[opt], np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
    return out


def _curves_axis(ax, rows, panel, title, max_epoch=None, log=True):
    dataset = ""
    for opt, (lr, epochs, losses) in selected_curves(rows, panel).items():
        keep = epochs <= max_epoch if max_epoch is not None else slice(None)
        color, style = STYLES[opt]
        ax.plot(epochs[keep], losses[keep], style, color=color, label=f"{LABELS[opt]} (α={lr:g})")
    for r in rows:
        if r["panel"] == panel:
            dataset = r["dataset"]
            break
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("iterations over entire dataset (epochs)")
    ax.set_ylabel("training cost")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return dataset


def _save(fig, path: Path, data_note: str) -> Path:
    fig.text(0.5, 0.005, f"data: {data_note}", ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure1(rows: list[dict], out: Path) -> Path:
    """Fig. 1: logistic regression, MNIST-like (left) and IMDB bag-of-words (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    d1 = _curves_axis(axes[0], rows, "fig1_mnist", "MNIST Logistic Regression (α/√t)")
    d2 = _curves_axis(axes[1], rows, "fig1_imdb", "IMDB BoW feature, 50% dropout (α/√t)")
    return _save(fig, out / "fig1.png", f"left: {d1}; right: {d2}")


def figure2(rows: list[dict], out: Path) -> Path:
    """Fig. 2a: MLP with dropout on MNIST-like data."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    d = _curves_axis(ax, rows, "fig2", "MNIST Multilayer Neural Network + dropout")
    return _save(fig, out / "fig2.png", d)


def figure3(rows: list[dict], out: Path, early_epochs: int) -> Path:
    """Fig. 3: CNN, first epochs (left) and all epochs (right), log scale."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    d = _curves_axis(
        axes[0], rows, "fig3", "CIFAR-10 ConvNet, first epochs", max_epoch=early_epochs
    )
    _curves_axis(axes[1], rows, "fig3", "CIFAR-10 ConvNet, all epochs")
    return _save(fig, out / "fig3.png", d)


def vae_losses(
    rows: list[dict], epoch: int
) -> dict[tuple[bool, float, float], tuple[np.ndarray, np.ndarray]]:
    """(bias_correction, beta1, beta2) -> (log10 alpha, loss after ``epoch`` epochs)."""
    acc: dict[tuple, list] = defaultdict(list)
    for r in rows:
        if r["panel"] == "fig4" and int(r["epoch"]) == epoch:
            key = (bool(int(r["bias_correction"])), float(r["beta1"]), float(r["beta2"]))
            acc[key].append((np.log10(float(r["learning_rate"])), float(r["loss"])))
    out = {}
    for key, pts in acc.items():
        pts.sort()
        out[key] = (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
    return out


def figure4(rows: list[dict], out: Path, few: int, many: int) -> Path:
    """Fig. 4: VAE loss vs log10(alpha); columns beta2, rows after ``few`` / ``many`` epochs;
    red = with bias correction, green = without; solid beta1 = 0.9, dashed beta1 = 0."""
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), sharex=True)
    data_note = next((r["dataset"] for r in rows if r["panel"] == "fig4"), "")
    for i, epoch in enumerate((few, many)):
        curves = vae_losses(rows, epoch)
        finite = [v for _, ys in curves.values() for v in ys if np.isfinite(v)]
        top = np.percentile(finite, 90) * 1.5 if finite else 1.0
        bottom = min(finite) * 0.95 if finite else 0.0
        for j, b2 in enumerate(VAE_BETA2):
            ax = axes[i, j]
            for bc, color in ((True, "tab:red"), (False, "tab:green")):
                for b1, style in ((0.9, "-"), (0.0, "--")):
                    if (bc, b1, b2) not in curves:
                        continue
                    x, y = curves[(bc, b1, b2)]
                    y = np.where(np.isfinite(y), np.minimum(y, top), top)  # diverged: clip to top
                    label = f"{'with' if bc else 'no'} bias corr., β1={b1}"
                    ax.plot(x, y, style, color=color, marker="o", ms=3, label=label)
            ax.set_ylim(bottom, top)
            ax.set_title(f"β2={b2}, after {epoch} epochs", fontsize=10)
            ax.set_xlabel("log10(α)")
            if j == 0:
                ax.set_ylabel("loss (negative ELBO)")
    axes[0, 0].legend(fontsize=7)
    return _save(fig, out / "fig4.png", data_note + "; diverged runs drawn at the top edge")
