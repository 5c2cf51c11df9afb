"""The training engine against a NumPy full-batch gradient descent, the verdict rule and the claims
on rows with known answers, grid extension, and the ``reproduce`` command end to end (tiny size):
argument checks, Ctrl-C, and a resumed run equal to an uninterrupted one."""

import csv
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adam_jax.tools import cli, interrupt
from adam_jax.tools.paper import claims, data, models, runner, train
from adam_jax.tools.paper import cli as paper_cli


def numpy_gradient_descent(x, y, w, b, lr, weight_decay, steps):
    """Full-batch gradient descent on softmax regression with an L2 penalty, by hand."""
    costs = []

    def cost(w, b):
        z = x @ w + b
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return -logp[np.arange(len(y)), y].mean() + 0.5 * weight_decay * np.sum(w**2)

    costs.append(cost(w, b))
    for _ in range(steps):
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        gw = x.T @ p / len(y) + weight_decay * w
        gb = p.mean(0)
        w, b = w - lr * gw, b - lr * gb
        costs.append(cost(w, b))
    return np.array(costs)


@pytest.mark.parametrize("vectorize", [True, False])
def test_train_runs_matches_numpy_full_batch(vectorize):
    # 128 examples = one minibatch per epoch, so the epoch is one full-batch step whatever the order
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=128).astype(np.int32)
    w0, b0 = rng.normal(size=(5, 3)) * 0.1, np.zeros(3)
    base = models.logistic_regression(5, 3, weight_decay=0.01)
    model = models.Model(
        "logreg",
        lambda key: {"w": jnp.asarray(w0, jnp.float32), "b": jnp.asarray(b0, jnp.float32)},
        base.loss,
    )
    lrs = np.array([0.1, 0.7])
    ticks = []
    losses, step_losses = train.train_runs_with_steps(
        model,
        x,
        y,
        lambda h: optax.sgd(h["lr"]),
        {"lr": lrs},
        4,
        seed=0,
        on_epoch=lambda: ticks.append(1),
        vectorize=vectorize,
        step_epochs=2,
    )
    assert losses.shape == (2, 5) and step_losses.shape == (2, 2)
    assert len(ticks) == (4 if vectorize else 8)
    for r, lr in enumerate(lrs):
        expected = numpy_gradient_descent(x.astype(np.float64), y, w0, b0, lr, 0.01, 4)
        np.testing.assert_allclose(losses[r], expected, rtol=2e-5)
        # no dropout in this model: the minibatch cost before step t is the cost after epoch t-1
        np.testing.assert_allclose(step_losses[r], expected[:2], rtol=2e-5)
    plain = train.train_runs(model, x, y, lambda h: optax.sgd(h["lr"]), {"lr": lrs}, 4, seed=0)
    np.testing.assert_allclose(plain, losses, rtol=1e-6)  # the costs alone (a new compile)


def test_train_runs_rejects_tiny_datasets():
    model = models.logistic_regression(2, 2)
    with pytest.raises(ValueError, match="at least 128 training examples, got 10"):
        train.train_runs(
            model, np.zeros((10, 2)), np.zeros(10, np.int32), optax.sgd, {"lr": np.ones(1)}, 1, 0
        )


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        runner.make_optimizer("lbfgs", False)


def test_schedule_is_alpha_over_sqrt_t():
    # SGD-Nesterov with alpha/sqrt(t) on a constant unit gradient, stepped by hand
    tx = runner.make_optimizer("sgd_nesterov", True)({"lr": jnp.float32(0.3)})
    params = jnp.zeros(())
    state = tx.init(params)
    # with momentum 0.9 Nesterov: update_t = -lr_t * (g + 0.9 * trace_t), trace_t = g + 0.9 trace_{t-1}
    trace, expected = 0.0, 0.0
    for t in range(1, 5):
        updates, state = tx.update(jnp.ones(()), state, params)
        params = optax.apply_updates(params, updates)
        trace = 1.0 + 0.9 * trace
        expected -= 0.3 / np.sqrt(t) * (1.0 + 0.9 * trace)
        np.testing.assert_allclose(float(params), expected, rtol=1e-5)


def test_schedule_skips_adagrad_only():
    fig1 = runner.PANELS[0]
    assert fig1.optimizers == ("adam", "sgd_nesterov", "adagrad", "adagrad_inv_sqrt", "adamax")
    assert [runner.scheduled(fig1, o) for o in fig1.optimizers] == [True, True, False, True, True]
    fig2 = next(p for p in runner.PANELS if p.panel == "fig2")
    assert not runner.scheduled(fig2, "adam")  # Fig. 2: constant alpha


@pytest.mark.parametrize(
    "x, expected",
    [
        ([-0.10, -0.12, -0.11], ("yes", 3)),  # all below 0, mean + t(2 df) se = -0.085
        ([0.10, 0.12, 0.11], ("no", 0)),
        ([-0.10, 0.01, -0.11], ("inconclusive", 2)),  # the seeds disagree
        ([-0.01, -0.30, -0.02], ("inconclusive", 3)),  # mean -0.11, t se = 0.41: within noise
        ([-0.1, -0.2, -0.3], ("inconclusive", 3)),  # 2 se (0.115) would say yes; t se is 0.248
        ([-0.1, -0.2, -0.3, -0.2, -0.2], ("yes", 5)),  # t(4 df) se = 0.088
        ([-0.5], ("inconclusive", 1)),  # one seed: spread unknown
        ([-math.inf, -math.inf], ("yes", 2)),  # b diverged in every seed
        ([0.0, 0.0, 0.0], ("no", 0)),  # a tie is not "below"
        ([math.inf, -math.inf, -0.1], ("inconclusive", 2)),  # diverged on both sides
    ],
)
def test_verdict_rule(x, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no inf - inf on the way
        verdict, k, n = claims.decide([claims.Statement("s", dict(enumerate(x)))])
    assert (verdict, k, n) == (*expected, len(x))


def test_t_quantiles():
    assert claims.t_quantile(2) == 4.303 and claims.t_quantile(4) == 2.776
    assert (
        abs(claims.t_quantile(31) - 2.0395) < 1e-3 and abs(claims.t_quantile(120) - 1.9799) < 1e-3
    )
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 5, 10, 30, 31, 60, 1000):
        assert abs(claims.t_quantile(df) - stats.t.ppf(0.975, df)) < 1e-3


def test_verdict_rule_combines_statements():
    yes = claims.Statement("a", {0: -1.0, 1: -1.1, 2: -0.9})
    no = claims.Statement("b", {0: 1.0, 1: 1.1, 2: 0.9})
    unsure = claims.Statement("c", {0: -1.0, 1: 1.0, 2: -1.0})
    assert claims.decide([yes, yes]) == ("yes", 3, 3)
    assert claims.decide([yes, unsure]) == ("inconclusive", 2, 3)
    assert claims.decide([yes, unsure, no]) == ("no", 0, 3)
    margin = claims.Statement("m", {0: 0.1, 1: 0.15, 2: 0.12}, claims.AS_FAST)  # 25% margin
    assert claims.decide([margin]) == ("yes", 3, 3)


def rows_for(panel, curves, seeds=(0, 1, 2), spread=0.01):
    """Verdict rows of the selected curves of ``panel``: cost 10 at the start, then the costs
    ``curves[opt]``, seed s multiplying them by 1 + spread * (s - 1); a dict gives each seed's
    own costs. Fig. 3 left's rows count iterations, the others epochs."""
    rows = []
    for opt, costs in curves.items():
        for s in seeds:
            own = (
                costs[s] if isinstance(costs, dict) else [c * (1 + spread * (s - 1)) for c in costs]
            )
            for i, loss in enumerate((10.0, *own)):
                it = str(i + 1) if panel.endswith("_iter") else ""
                rows.append({"panel": panel, "optimizer": opt, "selected": "1", "seed": str(s),
                             "stage": "verdict", "epoch": str(i), "iteration": it,
                             "loss": str(loss)})  # fmt: skip
    return rows


def test_claims_follow_the_numbers():
    good = rows_for("fig1_mnist", {"adam": [1.0, 0.5], "sgd_nesterov": [0.95, 0.5],
                                   "adagrad": [2.0, 1.5], "adagrad_inv_sqrt": [3.0, 2.0]})  # fmt: skip
    good += rows_for("fig1_imdb", {"adam": [0.3, 0.2], "adagrad": [0.3, 0.2],
                                   "adagrad_inv_sqrt": [0.3, 0.2], "sgd_nesterov": [0.6, 0.5]})  # fmt: skip
    good += rows_for("fig2", {"adam": [0.2, 0.1], "adagrad": [0.3, 0.2], "rmsprop": [0.3, 0.2],
                              "sgd_nesterov": [0.3, 0.2], "adadelta": [0.4, 0.3]})  # fmt: skip
    good += rows_for("fig3", {"adam": [0.1], "adagrad": [0.5], "sgd_nesterov": [0.12]})
    good += rows_for("fig3_iter", {"adam": [1.0], "adagrad": [1.1], "sgd_nesterov": [2.0]})
    result = claims.check(good, few=1, many=2)
    assert [c.figure for c in result] == [
        "Fig. 1 left (AdaGrad at a constant α)",
        "Fig. 1 left (AdaGrad at α/√t, Section 6.1 read literally)",
        "Fig. 1 right (AdaGrad at a constant α)",
        "Fig. 1 right (AdaGrad at α/√t, Section 6.1 read literally)",
        "Fig. 2", "Fig. 3 left", "Fig. 3 right",
    ]  # fmt: skip
    assert [(c.verdict, c.k, c.n) for c in result] == [("yes", 3, 3)] * 7
    # excess over the best cost reached (0.5): Adam (0.5 + 0) / 2, SGD (0.45 + 0) / 2
    assert "Adam 0.25 ± 0.0025, SGD Nesterov 0.225 ± 0.0022" in result[0].measured
    assert (
        "final cost: Adam 0.5 ± 0.005, SGD Nesterov 0.5 ± 0.005, AdaGrad 1.5" in result[0].measured
    )
    assert all(c.reason == "" for c in result)

    # Adam's cost above the best reached is 60% above SGD-Nesterov's (0.4 against 0.25)
    bad = rows_for("fig1_mnist", {"adam": [1.3, 0.5], "sgd_nesterov": [1.0, 0.5],
                                  "adagrad": [2.0, 1.5], "adagrad_inv_sqrt": [3.0, 2.0]})  # fmt: skip
    nan = {"adam": [0.2, 0.1], "adagrad": [0.3, 0.2], "rmsprop": [0.3, 0.2],
           "sgd_nesterov": [0.3, 0.2], "adadelta": [0.4, math.nan]}  # fmt: skip
    bad += rows_for("fig2", nan)  # a diverged (nan) AdaDelta counts as infinitely bad
    finals = {0: [0.09], 1: [0.11], 2: [0.1]}
    bad += rows_for("fig3", {"adam": finals, "adagrad": [0.1005], "sgd_nesterov": [0.05]})
    result = claims.check(bad, few=1, many=2)
    assert [c.verdict for c in result] == ["no", "no", "yes", "inconclusive"]
    assert "'adam as fast as sgd_nesterov' fails in every seed" in result[0].reason
    assert "'adam ends below adagrad' is not settled" in result[3].reason
    assert "Likely reason" in result[3].reason


def test_fig1_at_a_constant_alpha_is_a_full_run_panel_with_its_own_claim():
    """Section 6.1's alpha/sqrt(t) read both ways (results/RULES.md, issue 25 parts 6-8): the
    full run also trains Fig. 1 left and right (with and without dropout) with every optimizer at
    a constant alpha from the unshifted grids, and decides the same claims on them in rows of
    their own; quick runs leave them out."""
    (const,) = [p for p in runner.panels(runner.FULL) if p.panel == "fig1_mnist_const"]
    assert const.dataset == "mnist" and "adagrad_inv_sqrt" not in const.optimizers
    assert not any(runner.scheduled(const, opt) for opt in const.optimizers)
    unshifted = runner.grid_for("adam", runner.FULL, schedule=False)
    assert unshifted == runner.FULL_GRIDS["adam"]
    assert runner.FULL.epochs["fig1_mnist_const"] == runner.FULL.epochs["fig1_mnist"]
    assert "fig1_mnist_const" not in [p.panel for p in runner.panels(runner.QUICK)]
    ds = data.Dataset("mnist", np.ones((4, 6), np.float32), np.zeros(4, np.int32), 10, "d")
    assert runner.build_model("fig1_mnist_const", ds, runner.FULL).init(jax.random.PRNGKey(0))

    (dropped,) = [p for p in runner.panels(runner.FULL) if p.panel == "fig1_imdb_const"]
    assert dropped.dropout and not any(runner.scheduled(dropped, o) for o in dropped.optimizers)
    (right,) = [p for p in runner.panels(runner.FULL) if p.panel == "fig1_imdb_nodrop_const"]
    assert right.dataset == "imdb" and not right.dropout
    assert not any(runner.scheduled(right, opt) for opt in right.optimizers)
    imdb = data.Dataset("imdb", np.ones((4, 6), np.uint8), np.zeros(4, np.int32), 2, "d")
    model = runner.build_model("fig1_imdb_nodrop_const", imdb, runner.FULL)
    params = model.init(jax.random.PRNGKey(0))
    x, y = jnp.ones((4, 6)), jnp.zeros(4, jnp.int32)
    assert model.loss(params, x, y, jax.random.PRNGKey(1), True) == model.loss(
        params, x, y, jax.random.PRNGKey(1), False
    )  # no dropout
    model = runner.build_model("fig1_imdb_const", imdb, runner.FULL)
    assert model.input_dropout == 0.5

    rows = rows_for("fig1_mnist_const", {"adam": [1.0, 0.5], "sgd_nesterov": [0.95, 0.5],
                                         "adagrad": [0.9, 0.4], "adamax": [1.0, 0.6]})  # fmt: skip
    rows += rows_for("fig1_imdb_nodrop_const", {"adam": [0.3, 0.2], "adagrad": [0.3, 0.2],
                                                "rmsprop": [0.4, 0.3],
                                                "sgd_nesterov": [0.6, 0.5]})  # fmt: skip
    rows += rows_for("fig1_imdb_const", {"adam": [0.3, 0.2], "adagrad": [0.3, 0.2],
                                         "rmsprop": [0.4, 0.3],
                                         "sgd_nesterov": [0.2, 0.1]})  # fmt: skip
    left, dropped_claim, right_claim = claims.check(rows, few=1, many=2)
    assert dropped_claim.figure == "Fig. 1 right (every optimizer at a constant α)"
    assert dropped_claim.verdict == "no"  # SGD-Nesterov is the fastest here
    assert left.figure == "Fig. 1 left (every optimizer at a constant α)"
    assert left.verdict == "no"  # AdaGrad is the fastest here: both "faster" statements fail
    assert "AdaGrad 0.4" in left.measured
    assert right_claim.figure == "Fig. 1 right, no dropout (every optimizer at a constant α)"
    assert right_claim.verdict == "yes"


def test_claims_use_only_the_verdict_seeds():
    rows = rows_for("fig3", {"adam": [0.1], "adagrad": [0.5], "sgd_nesterov": [0.12]})
    rows += [{**r, "stage": "selection", "seed": str(1000 + int(r["seed"])), "loss": "0.001"}
             for r in rows_for("fig3", {"adagrad": [1.0]})]  # fmt: skip
    (claim,) = claims.check(rows, few=1, many=2)
    assert claim.verdict == "yes" and claim.n == 3


def vae_rows(loss_fn, seeds=(1000, 1001, 0, 1, 2)):
    rows = []
    for s in seeds:
        for bc in (0, 1):
            for b1 in runner.VAE_BETA1:
                for b2 in runner.VAE_BETA2:
                    for log_lr in runner.VAE_LOG10_ALPHA:
                        for epoch in range(4):
                            loss = 200.0 if epoch == 0 else loss_fn(bc, b1, b2, log_lr, epoch, s)
                            rows.append({"panel": "fig4", "bias_correction": str(bc),
                                         "beta1": str(b1), "beta2": str(b2), "seed": str(s),
                                         "stage": "selection" if s >= 1000 else "verdict",
                                         "learning_rate": str(10.0**log_lr), "epoch": str(epoch),
                                         "loss": str(loss)})  # fmt: skip
    return rows


def test_vae_claims_follow_section_6_4():
    def paper_like(bc, b1, b2, a, epoch, s):
        loss = 100 + abs(a + 3) + 0.1 * s - (5 if bc else 0) * (b2 > 0.99)
        if not bc and b2 == 0.9999:
            loss += 50
            if a >= -2:  # unstable at large steps: above the initial cost
                loss += 500
        return loss

    result = claims.check(vae_rows(paper_like), few=1, many=3)
    assert [c.figure for c in result] == [
        "Fig. 4 (best over α), 1 epochs",
        "Fig. 4 (best over α), 3 epochs",
        "Fig. 4 (stability), 1 epochs",
        "Fig. 4 (best setting), 3 epochs",
        "Fig. 4 / Sec. 6.4 (every grid point), 1 epochs",
        "Fig. 4 / Sec. 6.4 (every grid point), 3 epochs",
    ]
    assert [(c.verdict, c.n) for c in result] == [("yes", 3)] * 6
    # 2 alphas x 2 beta1 = 4 of 10 runs unstable without correction at beta2 = 0.9999
    assert "β2=0.9999: 0 ± 0 / 4 ± 0" in result[2].measured
    assert "β1=0.0, β2=0.9999: 95.1 ± 0.1 (α=1e-3) vs 150.1 ± 0.1 (α=1e-3)" in result[0].measured
    assert "30 / 0 / 0 of 30" in result[4].measured

    def opposite(bc, b1, b2, a, epoch, s):
        return 100 + abs(a + 3) + 0.1 * s - (5 if not bc else 0)

    result = claims.check(vae_rows(opposite), few=1, many=3)
    assert [c.verdict for c in result] == ["no"] * 6
    # a run of --few-epochs-only: the claims after the few epochs alone, decided the same way
    few_only = claims.check(vae_rows(opposite), few=1, many=None)
    assert few_only == [c for c in result if c.figure.endswith(", 1 epochs")]
    assert len(few_only) == 3

    def chosen_elsewhere(bc, b1, b2, a, epoch, s):
        # the selection seeds prefer alpha = 1e-5, where the verdict seeds are worst: the verdict
        # takes the selection's alpha, not the verdict seeds' own best
        if s >= 1000:
            return 100 + (a + 5)
        return 100 + (0 if a == -3 else 10) - (1 if bc else 0) * (a == -3)

    (best_few, *_) = claims.check(vae_rows(chosen_elsewhere), few=1, many=3)
    assert "110 ± 0 (α=1e-5) vs 110 ± 0 (α=1e-5)" in best_few.measured
    assert best_few.verdict == "no"


def test_vae_reasons_blame_the_bias_transient_only_while_it_lasts():
    """The likely reason under a Fig. 4 verdict names the early phase of v̂'s bias only while
    that bias is large at the run's last step (0.9999^t above 5%): 0.9999^t is 0.63 after 4,690
    steps (the paper's 10 epochs), 0.011 after 45,000."""

    def opposite(bc, b1, b2, a, epoch, s):
        return 100 + abs(a + 3) + 0.1 * s - (5 if not bc else 0)

    transient = "a run of few steps ends inside that early phase"
    few, many = "Fig. 4 (best over α), 1 epochs", "Fig. 4 (best setting), 3 epochs"
    unknown = {c.figure: c.reason for c in claims.check(vae_rows(opposite), few=1, many=3)}
    assert len(unknown) == 6 and all(transient in r and "t = " not in r for r in unknown.values())
    short = {c.figure: c.reason for c in claims.check(vae_rows(opposite), 1, 3, 4690)}
    assert all(transient in r for r in short.values())
    assert "(t = 4,690: 1 - β2^t = 0.37 at β2 = 0.9999)" in short[few]
    assert "(t = 14,070: 1 - β2^t = 0.76 at β2 = 0.9999)" in short[many]
    assert "Likely reason: at the best α the settings end close" in short[many]
    long = {c.figure: c.reason for c in claims.check(vae_rows(opposite), 1, 3, 15000)}
    assert "(t = 15,000: 1 - β2^t = 0.78 at β2 = 0.9999)" in long[few] and transient in long[few]
    after = [f for f in long if f.endswith(", 3 epochs")]
    assert len(after) == 3
    for figure in after:
        assert transient not in long[figure]
        assert "gone by the last step (t = 45,000: 1 - β2^t = 0.99 at β2 = 0.9999)" in long[figure]
    assert "Likely reason: at the best α the settings end close" in long[many]
    assert (
        "Likely reason: where both runs end near the seed's best loss"
        in long["Fig. 4 / Sec. 6.4 (every grid point), 3 epochs"]
    )
    # the verdicts do not depend on the iterations per epoch
    assert [c.verdict for c in claims.check(vae_rows(opposite), 1, 3, 15000)] == ["no"] * 6


def fake_train_runs(calls, per_epoch=None):
    """A stand-in for train.train_runs_with_steps: final cost (ln lr - ln 0.5)^2 + 1, so the best rate of a
    grid below 0.5 is at its top edge; records the learning rates of each call."""

    def train_runs(model, x, y, make_tx, hparams, epochs, seed, on_epoch=None, **kw):
        lrs = np.asarray(hparams["lr"])
        calls.append((tuple(lrs.tolist()), seed))
        final = (np.log(lrs) - np.log(0.5)) ** 2 + 1.0
        losses = np.stack([np.full_like(final, 10.0)] + [final] * epochs, axis=1)
        steps = kw.get("steps_per_epoch") or len(y) // 128
        if per_epoch is not None:
            per_epoch.append(steps)
        return losses, np.zeros((len(lrs), kw.get("step_epochs", 0) * steps))

    return train_runs


def test_grid_extends_past_an_edge_a_bounded_number_of_steps(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "train_runs_with_steps", fake_train_runs(calls))
    budget = runner.Budget("t", {"fig2": 1}, {o: (1e-3, 3e-3) for o in runner.LABELS}, seeds=2,
                           selection_seeds=2)  # fmt: skip
    panel = runner.Panel("fig2", "fig2", "mnist", ("adam",))
    ds = data.Dataset("mnist", np.zeros((256, 3), np.float32), np.zeros(256, np.int32), 2, "d")
    results = runner.Results(tmp_path / "results.csv", resume=False)
    rows = runner.run_panel(panel, ds, budget, [0, 1], results, runner.Progress())
    # two steps up (1e-2, 3e-2), both selection seeds each time; the optimum 0.5 stays out of
    # reach; then the selected rate alone on the verdict seeds
    assert calls == [((1e-3, 3e-3), 1000), ((1e-3, 3e-3), 1001), ((1e-2,), 1000),
                     ((1e-2,), 1001), ((3e-2,), 1000), ((3e-2,), 1001), ((3e-2,), 0),
                     ((3e-2,), 1)]  # fmt: skip
    assert {r["learning_rate"] for r in rows if r["selected"] == "1"} == {"0.03"}
    assert "0.03 **top edge of the grid**" in paper_cli._selection_notes(rows)
    assert runner.extend_grid((1e-3, 3e-3), up=True) == 1e-2
    assert runner.extend_grid((1e-3, 3e-3), up=False) == 3e-4
    assert runner.extend_grid((3e-4, 1e-3), up=False) == 1e-4
    assert runner.extend_grid((2e-3, 6e-3), up=True) == 2e-2


def test_resumed_fig3_rows_equal_the_first_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "train_runs_with_steps", fake_train_runs(calls))
    budget = runner.Budget(
        "t",
        {"fig3": 2, "fig3_early": 1},
        {o: (0.3, 1.0) for o in runner.LABELS},
        seeds=2,
        selection_seeds=2,
    )
    panel = runner.Panel("fig3", "fig3", "cifar10", ("adam", "sgd_nesterov"))
    ds = data.Dataset("cifar10", np.zeros((256, 1, 8, 8), np.float32), np.zeros(256, np.int32),
                      2, "d")  # fmt: skip
    path = tmp_path / "results.csv"
    first = runner.run_panel(panel, ds, budget, [0, 1], runner.Results(path, False),
                             runner.Progress())  # fmt: skip
    # 3 rates (0.1 added below the edge) x 2 optimizers x 2 selection seeds x 2 iterations, then
    # the selected rate x 2 optimizers x 2 verdict seeds x 2 iterations
    assert sum(r["panel"] == "fig3_iter" for r in first) == (3 * 2 * 2 + 2 * 2) * 2
    n_calls = len(calls)
    again = runner.run_panel(panel, ds, budget, [0, 1], runner.Results(path, True),
                             runner.Progress())  # fmt: skip
    assert len(calls) == n_calls and again == first  # nothing trained again, same rows


def test_resumed_rows_are_the_written_rows(tmp_path):
    path = tmp_path / "results.csv"
    row = {f: "" for f in runner.FIELDS}
    row.update(panel="fig4", optimizer="adam", hyperparameters="h", seed="0", selected="0")
    rows = [{**row, "epoch": str(e), "loss": str(1.0 / (e + 1))} for e in range(3)]
    runner.Results(path, resume=False).add(rows)
    resumed = runner.Results(path, resume=True)
    assert resumed.take([("fig4", "adam", "h", "0")], 2) == rows
    assert resumed.take([("fig4", "adam", "h", "1")], 2) is None  # never run


def test_a_run_trained_again_replaces_its_earlier_rows_on_resume(tmp_path):
    """A Fig. 4 run of --few-epochs-only continued to all its epochs is appended after its
    earlier rows; a later resume keeps the run trained again, and writes the file without the
    earlier rows."""
    path = tmp_path / "results.csv"
    row = {f: "" for f in runner.FIELDS}
    row.update(panel="fig4", optimizer="adam", hyperparameters="h", seed="0", selected="0")
    short = [{**row, "epoch": str(e), "loss": str(1.0 / (e + 1))} for e in range(2)]
    whole = [{**row, "epoch": str(e), "loss": str(2.0 / (e + 1))} for e in range(4)]
    other = [{**r, "seed": "1"} for r in short]
    results = runner.Results(path, resume=False)
    for rows in (short, other, whole):
        results.add(rows)
    resumed = runner.Results(path, resume=True)
    assert runner.read_csv(path) == whole + other  # in the place of the earlier rows
    assert resumed.take([("fig4", "adam", "h", "0")], 3) == whole
    assert resumed.take([("fig4", "adam", "h", "1")], 1) == other


def run_cli(*args):
    return cli.main(["reproduce", *args, "--no-progress"])


def test_fig4_few_epochs_only_then_resumed_equals_the_whole_run(tmp_path, capsys):
    """--few-epochs-only trains Fig. 4's runs for their first epochs and decides only the claims
    after them, the same as the whole run decides them; --resume without it trains the runs to
    the end, and leaves the very file an uninterrupted run writes."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run_cli("fig4", "--tiny", "--out", str(whole)) == 0
    assert run_cli("fig4", "--tiny", "--out", str(cut), "--few-epochs-only") == 0
    rows = runner.read_csv(cut / "results.csv")
    few, many = runner.TINY.epochs["fig4_few"], runner.TINY.epochs["fig4_many"]
    assert {int(r["epoch"]) for r in rows} == set(range(few + 1)) and few < many
    info = json.loads((cut / "run.json").read_text())
    assert info["few_epochs_only"] is True and "--few-epochs-only" in info["command"]
    summary = (cut / "summary.md").read_text()
    assert f"first {few} epochs only (`--few-epochs-only`)" in summary
    decided = claims.check(rows, few, None)
    assert decided == [
        c for c in claims.check(runner.read_csv(whole / "results.csv"), few, many)
        if c.figure.endswith(f", {few} epochs")
    ]  # fmt: skip
    table = claims.claims_table(summary)
    assert f"{many} epochs" not in table and table.count("| Fig. 4") == len(decided) == 3
    assert run_cli("fig4", "--tiny", "--out", str(cut), "--resume") == 0
    assert (cut / "results.csv").read_bytes() == (whole / "results.csv").read_bytes()
    assert "few_epochs_only" not in json.loads((cut / "run.json").read_text())
    assert claims.claims_table((cut / "summary.md").read_text()) == claims.claims_table(
        (whole / "summary.md").read_text()
    )
    capsys.readouterr()
    assert run_cli("fig1", "--tiny", "--out", str(tmp_path / "f1"), "--few-epochs-only") == 2
    assert "--few-epochs-only shortens Fig. 4's runs; fig1 has none" in capsys.readouterr().err


def test_reproduce_resumed_after_ctrl_c_equals_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("fig1", "--tiny", "--out", str(a)) == 0
    real, calls, checkpoint = train.train_runs_with_steps, [], []

    def interrupt_on_third_call(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            # before it stops, run.json already holds the time of the two finished groups (a
            # sitting killed outright, beyond any handler, keeps that much)
            so_far = json.loads((b / "run.json").read_text())
            assert so_far["status"] == "running" and so_far["sittings"][-1]["status"] == "running"
            assert so_far["figure_seconds"]["fig1"] > 0 and so_far["wall_seconds"] > 0
            assert so_far["figure_cpu_seconds"]["fig1"] > 0
            checkpoint.append(so_far["figure_seconds"]["fig1"])
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(train, "train_runs_with_steps", interrupt_on_third_call)
    assert run_cli("fig1", "--tiny", "--out", str(b)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"interrupted: the finished runs are in {b / 'results.csv'}; continue with --resume"
    ]
    kept = runner.read_csv(b / "results.csv")
    assert len({runner.run_key(r) for r in kept}) == 2  # the two finished groups (1 run each)
    stopped = json.loads((b / "run.json").read_text())
    assert stopped["status"] == "interrupted"
    assert stopped["figure_seconds"]["fig1"] > 0 and stopped["figure_cpu_seconds"]["fig1"] > 0
    assert stopped["figure_seconds"]["fig1"] >= checkpoint[0] and not list(b.glob("*.partial"))
    monkeypatch.setattr(train, "train_runs_with_steps", real)
    assert run_cli("fig1", "--tiny", "--out", str(b), "--resume") == 0
    assert (a / "results.csv").read_bytes() == (b / "results.csv").read_bytes()

    with open(a / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == runner.FIELDS and {r["seed"] for r in rows} == {"0", "1", "1000"}
    assert {r["stage"] for r in rows if r["seed"] == "1000"} == {"selection"}
    for panel in ("fig1_mnist", "fig1_imdb"):
        sel = [r for r in rows if r["panel"] == panel and r["stage"] == "verdict"]
        assert all(r["selected"] == "1" for r in sel)
        opts = {r["optimizer"] for r in sel}
        assert len(sel) == 2 * len(opts) * (runner.TINY.epochs[panel] + 1)
        assert np.isfinite([float(r["loss"]) for r in sel]).all()
    info = json.loads((b / "run.json").read_text())
    assert info["status"] == "finished" and info["seeds"] == [0, 1] and info["mode"] == "tiny"
    assert [s["status"] for s in info["sittings"]] == ["interrupted", "finished"]
    for key in ("adam_jax", "jax", "jaxlib", "optax", "device", "command", "git_commit"):
        assert key in info
    summary = (a / "summary.md").read_text()
    assert "| Fig. 1 left (AdaGrad at a constant α) |" in summary
    assert "standing in for MNIST" in summary and "seeds 0, 1" in summary
    # the summary's verdicts are the ones the claims code computes from the written file
    for c in claims.check(runner.read_csv(a / "results.csv"), 1, 2):
        assert f"| {c.measured} | {c.k} of {c.n} | **{c.verdict}** (tiny) |" in summary
    assert (a / "fig1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figures_in_parallel_equal_one_process_and_survive_ctrl_c(tmp_path, shared_jax_cache):
    """``reproduce all`` in two processes, interrupted (Ctrl-C to the parent) once a figure has
    finished runs, then resumed: the same results.csv, byte for byte, as one process.

    Every run is a process of its own sharing one persistent JAX compilation cache (with the
    notebook test's): the first run compiles each training step once, and the later runs load the
    same executables instead of compiling them again (most of a tiny run is compilation)."""
    one, par = tmp_path / "one", tmp_path / "par"
    solo = ["all", "--tiny", "--seeds", "1", "--jobs", "1", "--out", str(one), "--no-progress"]
    subprocess.run([sys.executable, "-m", "adam_jax", "reproduce", *solo], check=True)
    assert any(shared_jax_cache.iterdir())
    args = ["all", "--tiny", "--seeds", "1", "--jobs", "2", "--out", str(par), "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "adam_jax", "reproduce", *args],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not any(len(p.read_text().splitlines()) > 1 for p in par.glob("parts/*/results.csv")):
        assert proc.poll() is None and time.monotonic() < deadline, "no run finished"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert f"interrupted: the finished runs are in {par / 'results.csv'}" in err
    kept = {runner.run_key(r) for r in runner.read_csv(par / "results.csv")}
    assert kept  # the finished runs were merged
    assert json.loads((par / "run.json").read_text())["status"] == "interrupted"

    assert run_cli(*args, "--resume") == 0
    assert (one / "results.csv").read_bytes() == (par / "results.csv").read_bytes()
    info = json.loads((par / "run.json").read_text())
    assert info["jobs"] == 2 and info["status"] == "finished"
    assert [s["status"] for s in info["sittings"]] == ["interrupted", "finished"]
    assert list(info["figure_seconds"]) == list(runner.FIGURES)
    assert not (par / "parts").exists()
    assert "figures in 2 parallel processes" in (par / "summary.md").read_text()


def test_a_failing_figure_process_stops_the_run_and_names_its_log(tmp_path, monkeypatch, capsys):
    from adam_jax.tools.paper import parallel

    def command(args, size, figure, seeds, part):
        code = 3 if figure == "fig2" else 0  # fig2's process fails at once; the others do nothing
        return [
            sys.executable,
            "-c",
            f"import sys, time; time.sleep({0 if code else 30}); sys.exit({code})",
        ]

    monkeypatch.setattr(parallel, "_command", command)
    out = tmp_path / "o"
    assert run_cli("all", "--tiny", "--jobs", "2", "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert (
        f"error: fig2 stopped with exit code 3; its output is in {out / 'parts' / 'fig2' / 'log.txt'}"
        in err
    )
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def test_python_m_adam_jax_paper_handles_ctrl_c_as_adam_jax_does(monkeypatch, capsys):
    """``python -m adam_jax.paper`` records Ctrl-C like ``adam-jax``: one lost in a callback
    (the flag set, the exception dropped) still ends the command with 130."""
    handlers = []

    def reproduce(args):
        handlers.append(signal.getsignal(signal.SIGINT))
        interrupt._interrupted.set()  # as if the exception of a Ctrl-C had been dropped
        return 0

    monkeypatch.setattr(paper_cli, "reproduce", reproduce)
    assert paper_cli.main(["fig1", "--tiny"]) == 130
    assert (
        handlers == [interrupt._on_ctrl_c]
        and signal.getsignal(signal.SIGINT) is not interrupt._on_ctrl_c
    )
    assert capsys.readouterr().err.strip() == "interrupted"
    # a Ctrl-C that reproduce caught and reported (returning 130) is not reported twice
    monkeypatch.setattr(paper_cli, "reproduce", lambda args: interrupt._interrupted.set() or 130)
    assert paper_cli.main(["fig1", "--tiny"]) == 130
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("jobs", ["0", "-1", "x"])
def test_bad_jobs_exit_2(jobs, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli("all", "--tiny", "--jobs", jobs)
    assert info.value.code == 2 and "--jobs" in capsys.readouterr().err


def test_resume_refuses_a_different_run(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"mode": "quick", "figures": ["fig1"]}))
    assert run_cli("fig1", "--tiny", "--out", str(out), "--resume") == 2
    assert "holds a run with different mode ('quick', not 'tiny')" in capsys.readouterr().err


def test_out_is_checked_before_any_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "train_runs_with_steps", None)  # any training would fail loudly
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run_cli("fig2", "--tiny", "--out", str(blocker)) == 2
    assert f"--out {blocker} is a file, not a directory" in capsys.readouterr().err
    assert run_cli("fig2", "--tiny", "--out", str(blocker / "sub")) == 2
    assert f"--out {blocker / 'sub'} cannot be created or written" in capsys.readouterr().err
    created = tmp_path / "new" / "dir"
    assert run_cli("fig2", "--tiny", "--out", str(created), "--data-dir", str(tmp_path)) == 2
    assert created.is_dir() and not any(created.iterdir())


@pytest.mark.parametrize("seeds", ["0", "-1", "1,1", "x", "-3,2"])
def test_bad_seeds_exit_2(seeds, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli("fig2", "--tiny", "--seeds", seeds)
    assert info.value.code == 2 and "--seeds" in capsys.readouterr().err


def test_seeds_parse():
    assert paper_cli.parse_seeds("3") == [0, 1, 2]
    assert paper_cli.parse_seeds("4,") == [4]
    assert paper_cli.parse_seeds("0,3,7") == [0, 3, 7]


def test_help_describes_the_real_grids(capsys):
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "2-point" not in text
    assert "Adam 0.001..0.03 (4)" in text and "RMSProp 0.0003..0.003 (3)" in text  # quick
    assert "Adam 0.0001..0.03 (6)" in text  # full


@pytest.mark.parametrize(
    "args, message",
    [(["--seed", "-1"], "--seed must be an integer in [0, 4294967295], got -1"),
     (["--steps", "0"], "--steps must be an integer >= 1, got 0")],
)  # fmt: skip
def test_demo_rejects_bad_arguments_before_work(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", *args])
    assert info.value.code == 2
    out = capsys.readouterr()
    assert out.err.strip() == f"error: {message}" and out.out == ""


def test_demo_ctrl_c_exits_130(monkeypatch, capsys):
    from adam_jax.tools import demo

    def interrupted(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "make_data", interrupted)
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--steps", "3"])
    assert info.value.code == 130 and capsys.readouterr().err == "interrupted\n"


def test_reproduce_with_missing_data_fails_helpfully(tmp_path, capsys):
    assert run_cli("fig2", "--tiny", "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "leave out --data-dir" in err


def test_work_units_counts_progress_ticks():
    budget = runner.TINY
    # fig1: 5 + 6 optimizers, one grid point each in tiny mode on 1 selection seed, the selected
    # one on 2 verdict seeds, 2 epochs each
    assert runner.work_units(["fig1"], budget, seeds=2) == (11 * 1 + 11 * 2) * 2
    assert runner.work_units(["fig4"], budget) == 2 * budget.epochs["fig4_many"] * (1 + 1)


def test_verdict_seeds_must_differ_from_the_selection_seeds(tmp_path, capsys):
    assert run_cli("fig1", "--tiny", "--seeds", "0,1000", "--out", str(tmp_path / "o")) == 2
    assert "choose seeds below 1000" in capsys.readouterr().err


def test_jax_default_precision_untouched():
    assert jnp.zeros(1).dtype == jnp.float32 and not jax.config.jax_enable_x64


def test_minibatches_stream_passes_across_paper_length_epochs():
    # 1,000 examples: 7 minibatches per pass; epochs of 10 iterations cross passes
    stream = train.Minibatches(jax.random.PRNGKey(0), 1000, 30)
    order = np.concatenate([stream.chunk(i * 10, 10)[0] for i in range(3)])
    assert order.shape == (30, 128)
    for p in range(4):  # each pass a permutation without repeats, 7 x 128 of the 1,000
        seen = order[p * 7 : (p + 1) * 7].ravel()
        assert len(set(seen.tolist())) == seen.size
    one_pass = train.Minibatches(jax.random.PRNGKey(0), 1000, 7).chunk(0, 7)
    np.testing.assert_array_equal(one_pass[0], order[:7])  # the same stream, however it is cut


def test_paper_length_epochs_take_the_given_iterations():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=256).astype(np.int32)
    model = models.logistic_regression(5, 3)
    ticks = []
    losses, steps = train.train_runs_with_steps(
        model, x, y, lambda h: optax.sgd(h["lr"]), {"lr": np.array([0.1])}, 2, seed=0,
        on_epoch=lambda: ticks.append(1), step_epochs=1, steps_per_epoch=5,
    )  # fmt: skip
    assert losses.shape == (1, 3) and steps.shape == (1, 5) and len(ticks) == 2


def test_full_mode_epochs_are_the_papers_iterations_and_dropout_is_run_both_ways(monkeypatch):
    import dataclasses

    calls, per_epoch = [], []
    monkeypatch.setattr(train, "train_runs_with_steps", fake_train_runs(calls, per_epoch))
    monkeypatch.setattr(runner, "PAPER_STEPS", {"mnist": 3, "imdb": 5, "cifar10": 7})
    budget = dataclasses.replace(
        runner.TINY, paper_steps=True, no_dropout=True, cifar_size=16,
        epochs={**runner.TINY.epochs, "fig1_imdb_nodrop": 1, "fig3_nodrop": 1},
    )  # fmt: skip
    assert [p.panel for p in runner.panels(budget)] == [
        "fig1_mnist", "fig1_imdb", "fig1_imdb_nodrop", "fig2", "fig3", "fig3_nodrop"
    ]  # fmt: skip
    assert [p.panel for p in runner.panels(runner.QUICK)] == [
        "fig1_mnist",
        "fig1_imdb",
        "fig2",
        "fig3",
    ]
    datasets = runner.load_data(["fig3"], budget, None)
    assert datasets["cifar10"].x.shape[1:] == (3, 16, 16)
    rows = runner.run(["fig3"], budget, [0, 1], datasets,
                      runner.Results(Path(tempfile.mkdtemp()) / "r.csv", False), runner.Progress())  # fmt: skip
    assert set(per_epoch) == {7}
    # the no-dropout CNN: 3 optimizers, 1 rate, on 1 selection and 2 verdict seeds, 1 epoch of 7
    assert sum(r["panel"] == "fig3_nodrop_iter" for r in rows) == 3 * 3 * 7
    imdb = data.Dataset("imdb", np.ones((4, 6), np.uint8), np.zeros(4, np.int32), 2, "d")
    x, y = jnp.ones((4, 6)), jnp.zeros(4, jnp.int32)
    for panel, dropped in (("fig1_imdb", True), ("fig1_imdb_nodrop", False)):
        model = runner.build_model(panel, imdb, budget)
        params = model.init(jax.random.PRNGKey(0))
        train_loss = model.loss(params, x, y, jax.random.PRNGKey(1), True)
        assert (train_loss != model.loss(params, x, y, jax.random.PRNGKey(1), False)) == dropped


def test_run_json_names_the_commit_of_the_checkout(tmp_path, monkeypatch):
    """Against a checkout made here (CI runs the tests from the sdist, which is not one)."""
    import subprocess

    module = tmp_path / "adam_jax" / "tools" / "paper" / "cli.py"
    module.parent.mkdir(parents=True)
    module.write_text("# a tracked file\n")
    monkeypatch.setattr(paper_cli, "__file__", str(module))
    assert paper_cli._git_commit() is None  # not a checkout: no commit is claimed

    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True,
                                    capture_output=True, text=True).stdout.strip()  # fmt: skip
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    assert paper_cli._git_commit() == head
    module.write_text("# changed\n")
    assert paper_cli._git_commit() == head + "+uncommitted changes to adam_jax"
