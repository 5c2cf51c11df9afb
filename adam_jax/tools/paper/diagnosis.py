"""Section 6.3's diagnosis, measured: in the CNN, does v̂ vanish so that ε dominates the denominator?

The paper: "the second moment estimate v̂_t vanishes to zeros after a few epochs and is dominated
by the ε in algorithm 1". For Adam the denominator is ``√v̂_t + ε`` with ``v̂_t = v_t/(1-β2^t)``;
for AdaGrad (Duchi et al., :mod:`baselines`) it is ``δ + √G_t``. After every epoch this module
reads the optimizer's state and reports, over all parameters: the median of the root term
(``√v̂``; for AdaGrad also ``√(G_t/t)``, the root mean square gradient, comparable to ``√v̂``),
ε's mean share of the denominator ``ε/(root + ε)``, and the fraction of parameters where ε is the
larger term.

``python -m adam_jax.tools.paper.diagnosis RESULTS_DIR`` trains the quick run's CNN (seed 0,
its data and epochs) with Adam and AdaGrad at the learning rates that run selected (read from
``RESULTS_DIR/results.csv``) and writes ``RESULTS_DIR/diagnosis_6_3.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adam_jax.tools.paper import baselines, runner, train
from adam_jax.tools.paper.baselines import ScaleByAdagradState
from adam_jax.transforms import ScaleByAdamState

EPS = {"adam": 1e-8, "adagrad": baselines.ADAGRAD_DELTA}


def _find(state, cls):
    return next(
        s
        for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, cls))
        if isinstance(s, cls)
    )


def denominator_stats(name: str, state, steps: int, b2: float = 0.999) -> dict[str, float]:
    """The root term and ε's share of the denominator over all parameters, for ``adam`` (state
    of ``adam_jax.adam``) or ``adagrad`` (:func:`baselines.adagrad`) after ``steps`` steps."""
    if name == "adam":
        nu = _find(state, ScaleByAdamState).nu
        v = np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(nu)])
        root = np.sqrt(v / (1.0 - b2**steps))  # Alg. 1: sqrt(v_hat_t)
        rms = root
    else:
        g2 = _find(state, ScaleByAdagradState).sum_of_squares
        big_g = np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(g2)])
        root, rms = np.sqrt(big_g), np.sqrt(big_g / steps)  # Duchi: sqrt(G_t); and its mean
    eps = EPS[name]
    return {
        "median_root": float(np.median(root)),
        "median_rms": float(np.median(rms)),
        "eps_share": float(np.mean(eps / (root + eps))),
        "eps_dominates": float(np.mean(eps > root)),
        "zero_root": float(np.mean(root == 0)),  # parameters that never had a gradient
    }


def diagnose(model, x, y, name: str, lr: float, epochs: int, seed: int) -> list[dict[str, float]]:
    """Train ``model`` with ``name`` (``adam`` or ``adagrad``) at ``lr`` from the initialisation
    and minibatches of ``seed`` (as :func:`train.train_runs_with_steps`); the
    :func:`denominator_stats` after every epoch."""
    tx = runner.make_optimizer(name, False)({"lr": jnp.float32(lr)})
    k_init, _, k_epochs = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = jax.jit(model.init)(k_init)
    state = tx.init(params)
    steps = len(y) // train.BATCH_SIZE
    batches = train.Minibatches(k_epochs, len(y), epochs * steps)
    x_dev, y_dev = jnp.asarray(x), jnp.asarray(y)

    @jax.jit
    def epoch(params, state, order, keys):
        def step(carry, batch):
            p, s = carry
            grads = jax.grad(model.loss)(p, x_dev[batch[0]], y_dev[batch[0]], batch[1], True)
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        return jax.lax.scan(step, (params, state), (order, keys))[0]

    out = []
    for e in range(1, epochs + 1):
        params, state = epoch(params, state, *batches.chunk((e - 1) * steps, steps))
        out.append({"epoch": e, **denominator_stats(name, state, e * steps)})
    return out


def selected_rates(rows: list[dict], panel: str = "fig3") -> dict[str, float]:
    """optimizer -> the learning rate the run selected for ``panel`` (on its selection seeds)."""
    return {
        r["optimizer"]: float(r["learning_rate"])
        for r in rows
        if r["panel"] == panel and r["stage"] == "selection" and r["selected"] == "1"
    }


def main(argv: list[str] | None = None) -> int:
    folder = Path((argv or sys.argv[1:] or ["results/quick"])[0])
    budget = runner.QUICK
    rates = selected_rates(runner.read_results(folder / "results.csv"))
    ds = runner.load_data(["fig3"], budget, None)["cifar10"]
    model = runner.build_model("fig3", ds, budget)
    epochs = budget.epochs["fig3"]
    lines = [
        "# Section 6.3: v̂ and ε in the CNN (quick run's CNN and data, seed 0)",
        "",
        f"Written by `python -m adam_jax.tools.paper.diagnosis {folder}`: each optimizer at the "
        f"rate the quick run selected (Adam α = {rates['adam']:g}, AdaGrad α = "
        f"{rates['adagrad']:g}), {epochs} epochs of {len(ds.y) // train.BATCH_SIZE} iterations. "
        "Over all parameters after each epoch: the median root term of the denominator (Adam "
        "√v̂, ε = 1e-8; AdaGrad √G_t, δ = 1e-10, and √(G_t/t), the root mean square gradient), "
        "ε's mean share ε/(root + ε), the fraction of parameters where ε is the larger term, and "
        "the fraction whose root term is exactly 0 (no gradient ever reached them: on the 8x8 "
        "images, 16 of the third convolution's 25 taps and dead ReLU units).",
        "",
        "| epoch | Adam median √v̂ | Adam ε share | Adam ε larger | Adam √v̂ = 0 | AdaGrad "
        "median √G | AdaGrad median √(G/t) | AdaGrad δ share | AdaGrad δ larger | AdaGrad √G = 0 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    adam = diagnose(model, ds.x, ds.y, "adam", rates["adam"], epochs, 0)
    ada = diagnose(model, ds.x, ds.y, "adagrad", rates["adagrad"], epochs, 0)
    for a, g in zip(adam, ada, strict=True):
        lines.append(
            f"| {a['epoch']} | {a['median_root']:.3g} | {a['eps_share']:.3g} | "
            f"{a['eps_dominates']:.3g} | {a['zero_root']:.3g} | {g['median_root']:.3g} | "
            f"{g['median_rms']:.3g} | {g['eps_share']:.3g} | {g['eps_dominates']:.3g} | "
            f"{g['zero_root']:.3g} |"
        )
    (folder / "diagnosis_6_3.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
