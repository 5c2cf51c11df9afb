"""The qualitative claims of Section 6, checked against the numbers in ``results.csv``.

Each check reads the selected (grid-searched) curves, states the measured numbers and decides
whether this run reproduces the claim. Thresholds are stated in the claim text; nothing here is
written by hand.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from adam_jax.paper.figures import selected_curves, vae_losses
from adam_jax.paper.runner import LABELS, VAE_BETA2

CLOSE = 0.25  # "about as fast": final cost within 25% of the other optimizer's


@dataclasses.dataclass(frozen=True)
class Claim:
    """A paper claim, what this run measured, and whether it holds."""

    figure: str
    claim: str
    measured: str
    reproduced: bool | None  # None: the figure was not run


def _final(curves, opt) -> float:
    loss = curves[opt][2][-1] if opt in curves else math.nan
    return float(loss) if np.isfinite(loss) else math.inf


def _at(curves, opt, epoch) -> float:
    if opt not in curves:
        return math.inf
    epochs, losses = curves[opt][1], curves[opt][2]
    value = losses[epochs == epoch]
    return float(value[0]) if value.size and np.isfinite(value[0]) else math.inf


def _nums(values: dict[str, float]) -> str:
    return ", ".join(f"{LABELS.get(k, k)} {v:.4g}" for k, v in values.items())


def check(rows: list[dict], early_epoch: int, few: int, many: int) -> list[Claim]:
    """Evaluate every claim whose figure is present in ``rows``."""
    claims = []
    panels = {r["panel"] for r in rows}

    if "fig1_mnist" in panels:
        c = selected_curves(rows, "fig1_mnist")
        f = {o: _final(c, o) for o in ("adam", "sgd_nesterov", "adagrad")}
        ok = (
            f["adam"] <= (1 + CLOSE) * f["sgd_nesterov"]
            and max(f["adam"], f["sgd_nesterov"]) < f["adagrad"]
        )
        claims.append(Claim("Fig. 1 left", "Logistic regression (MNIST): Adam converges about as fast as "
                            f"SGD-Nesterov (final cost within {CLOSE:.0%}) and both beat AdaGrad",
                            "final training cost: " + _nums(f), ok))  # fmt: skip
    if "fig1_imdb" in panels:
        c = selected_curves(rows, "fig1_imdb")
        f = {o: _final(c, o) for o in ("adam", "adagrad", "sgd_nesterov", "rmsprop")}
        ok = f["adagrad"] < f["sgd_nesterov"] and f["adam"] <= (1 + CLOSE) * f["adagrad"]
        claims.append(Claim("Fig. 1 right", "Sparse bag-of-words logistic regression: AdaGrad beats "
                            f"SGD-Nesterov, and Adam is as fast as AdaGrad (final cost within {CLOSE:.0%})",
                            "final training cost: " + _nums(f), ok))  # fmt: skip
    if "fig2" in panels:
        c = selected_curves(rows, "fig2")
        f = {o: _final(c, o) for o in ("adam", "adagrad", "rmsprop", "sgd_nesterov", "adadelta")}
        ok = all(f["adam"] < v for k, v in f.items() if k != "adam")
        claims.append(Claim("Fig. 2", "MLP with dropout: Adam reaches a lower training cost than AdaGrad, "
                            "RMSProp, SGD-Nesterov and AdaDelta", "final training cost: " + _nums(f), ok))  # fmt: skip
    if "fig3" in panels:
        c = selected_curves(rows, "fig3")
        opts = ("adam", "adagrad", "sgd_nesterov")
        early = {o: _at(c, o, early_epoch) for o in opts}
        ok = max(early["adam"], early["adagrad"]) < early["sgd_nesterov"]
        claims.append(Claim("Fig. 3 left", f"CNN: early on (epoch {early_epoch}) Adam and AdaGrad have "
                            "dropped further than SGD-Nesterov", "training cost: " + _nums(early), ok))  # fmt: skip
        f = {o: _final(c, o) for o in opts}
        ok = max(f["adam"], f["sgd_nesterov"]) < f["adagrad"]
        claims.append(Claim("Fig. 3 right", "CNN: at the end Adam and SGD-Nesterov are below AdaGrad",
                            "final training cost: " + _nums(f), ok))  # fmt: skip
    if "fig4" in panels:
        for epoch in (few, many):
            curves = vae_losses(rows, epoch)
            # pairs (beta1, alpha) at beta2 = 0.9999 where dropping the correction made it worse
            pairs = [
                (curves[(True, b1, 0.9999)][1], curves[(False, b1, 0.9999)][1]) for b1 in (0.0, 0.9)
            ]
            with_bc = np.concatenate([p[0] for p in pairs])
            without = np.concatenate([p[1] for p in pairs])
            worse = np.where(np.isfinite(without), without, np.inf) > np.where(
                np.isfinite(with_bc), with_bc, np.inf
            )
            claims.append(Claim(f"Fig. 4, {epoch} epochs", "VAE, β2=0.9999: without bias correction training "
                                "is worse (higher loss than with it for most of the (α, β1) grid)",
                                f"worse without correction at {int(worse.sum())} of {worse.size} (α, β1) points; "
                                f"mean loss with {np.nanmean(np.where(np.isfinite(with_bc), with_bc, np.nan)):.4g}, "
                                f"without {np.nanmean(np.where(np.isfinite(without), without, np.nan)):.4g} (finite runs)",
                                bool(worse.sum() > worse.size / 2)))  # fmt: skip
        curves = vae_losses(rows, many)
        overall = {(bc, b2): min(
            (float(v) for b1 in (0.0, 0.9) for v in curves[(bc, b1, b2)][1] if np.isfinite(v)), default=math.inf)
            for bc in (True, False) for b2 in VAE_BETA2}  # fmt: skip
        (bc, b2) = min(overall, key=overall.get)
        claims.append(Claim(f"Fig. 4, {many} epochs", "VAE: the best result needs small 1-β2 (β2 ≥ 0.999) "
                            "and bias correction", f"best loss {overall[(bc, b2)]:.4g} at β2={b2}, "
                            f"{'with' if bc else 'without'} bias correction", bc and b2 >= 0.999))  # fmt: skip
    return claims


def summary_markdown(claims: list[Claim], header: str, selected: str) -> str:
    """The ``summary.md`` text: a header, the claims table and the selected learning rates."""
    lines = [
        header,
        "",
        "| figure | claim of the paper | measured in this run | reproduced |",
        "|---|---|---|---|",
    ]
    for c in claims:
        verdict = "yes" if c.reproduced else "no"
        lines.append(f"| {c.figure} | {c.claim} | {c.measured} | **{verdict}** |")
    n_ok = sum(bool(c.reproduced) for c in claims)
    lines += ["", f"{n_ok} of {len(claims)} claims reproduced in this run.", "", selected]
    return "\n".join(lines) + "\n"
