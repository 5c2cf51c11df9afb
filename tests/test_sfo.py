"""SFO (adam_jax.tools.paper.sfo) on sums of quadratics, whose minimiser numpy.linalg.solve gives
exactly, and the Fig. 2b verdict recomputed from its committed results."""

import json
from pathlib import Path

import numpy as np
import pytest

from adam_jax.tools.paper import claims, fig2b, runner
from adam_jax.tools.paper.sfo import SFO


def quadratic_sum(dim: int, n: int, cond: float, seed: int):
    """N convex quadratics f_i(x) = ½ xᵀA_i x - b_iᵀx whose sum has condition number about
    ``cond``; returns (f_and_grad, A = Σ A_i, b = Σ b_i, x0)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    shared = q @ np.diag(np.logspace(0, np.log10(cond), dim)) @ q.T / n
    a = [shared + (m @ m.T) / (dim * n) for m in 0.3 * rng.normal(size=(n, dim, dim))]
    b = rng.normal(size=(n, dim))

    def f_and_grad(x, i):
        return 0.5 * x @ a[i] @ x - b[i] @ x, a[i] @ x - b[i]

    return f_and_grad, sum(a), b.sum(0), rng.normal(size=dim)


def run_passes(opt: SFO, n: int, passes: int, each=None) -> None:
    while opt.evaluations < passes * n:
        opt.step()
        if each is not None:
            each(opt)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reaches_the_exact_minimiser_of_a_strongly_convex_sum(seed):
    n = 4
    f_and_grad, a, b, x0 = quadratic_sum(12, n, cond=100.0, seed=seed)
    x_star = np.linalg.solve(a, b)
    opt = SFO(f_and_grad, x0, n)
    run_passes(opt, n, passes=40)
    np.testing.assert_allclose(opt.x, x_star, rtol=0, atol=1e-8 * np.abs(x_star).max())


def test_beats_gradient_descent_per_pass_on_a_badly_conditioned_sum():
    n, passes = 4, 20
    f_and_grad, a, b, x0 = quadratic_sum(15, n, cond=1e4, seed=0)
    x_star = np.linalg.solve(a, b)

    def gap(x):
        return 0.5 * (x - x_star) @ a @ (x - x_star)

    opt = SFO(f_and_grad, x0, n)
    run_passes(opt, n, passes)
    x = x0.copy()
    step = 1.0 / np.linalg.eigvalsh(a).max()  # the best fixed step of gradient descent
    for _ in range(passes):  # one pass = the N evaluations of one full gradient
        x = x - step * (a @ x - b)
    assert gap(opt.x) < 1e-3 * gap(x)


def test_the_subspace_stays_orthonormal_within_its_bound_and_holds_x():
    n = 4
    f_and_grad, a, b, x0 = quadratic_sum(40, n, cond=10.0, seed=3)
    opt = SFO(f_and_grad, x0, n)
    assert opt.basis.shape == (3 * n + 3, 40)  # memory linear in the number of subfunctions
    dims = []

    def check(o):
        dims.append(o.dim)
        np.testing.assert_allclose(o.p @ o.p.T, np.eye(o.dim), atol=1e-10)
        np.testing.assert_allclose(o.p.T @ (o.p @ o.x), o.x, atol=1e-9 * np.abs(o.x).max())

    run_passes(opt, n, passes=30, each=check)
    assert max(dims) <= 3 * n + 3 and opt.collapses > 0
    x_star = np.linalg.solve(a, b)
    np.testing.assert_allclose(opt.x, x_star, atol=1e-6 * np.abs(x_star).max())


def test_a_step_that_raises_the_evaluated_subfunction_is_undone():
    """A subfunction that is not finite beyond |x| > 2: every step out there is a failure, SFO
    returns to the previous point, halves its step scale, and still converges."""
    n = 3
    f_and_grad, a, b, _ = quadratic_sum(6, n, cond=10.0, seed=4)
    x_star = np.linalg.solve(a, b)

    def walled(x, i):
        f, g = f_and_grad(x, i)
        return (np.inf, g) if np.abs(x).max() > 2 * np.abs(x_star).max() + 1 else (f, g)

    opt = SFO(walled, np.zeros(6), n, hessian_init=1e-3)  # a first step far too long
    run_passes(opt, n, passes=40)
    assert opt.failures > 0
    np.testing.assert_allclose(opt.x, x_star, atol=1e-6 * np.abs(x_star).max())


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"x0": np.zeros((2, 2))}, "x0"),
        ({"x0": np.zeros(0)}, "x0"),
        ({"num_subfunctions": 0}, "num_subfunctions"),
        ({"num_subfunctions": 2.5}, "num_subfunctions"),
        ({"max_dim": 7}, "max_dim"),
        ({"history": 0}, "history"),
        ({"hessian_init": -1.0}, "hessian_init"),
        ({"hessian_init": float("nan")}, "hessian_init"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    args = {"f_and_grad": lambda x, i: (0.0, x), "x0": np.ones(5), "num_subfunctions": 2}
    with pytest.raises(ValueError, match=name):
        SFO(**(args | kwargs))


REPO = Path(__file__).resolve().parents[1]
FIG2B = REPO / "results" / "fig2b"


def _independent_fig2b_statistics(rows: list[dict]) -> dict[str, dict[int, float]]:
    """The three per-seed statistics of the Fig. 2b rule (results/RULES.md), from the raw rows
    with NumPy alone: Adam minus SFO mean ln cost over the passes, the same at 20 equally spaced
    times of the shorter run, and ln(Adam's seconds per iteration / SFO's)."""
    runs: dict[tuple[str, int], list] = {}
    for r in rows:
        if r["panel"] == "fig2b" and r["stage"] == "verdict":
            key = (r["optimizer"], int(r["seed"]))
            point = (int(r["epoch"]), float(r["seconds"]), int(r["iteration"]), float(r["loss"]))
            runs.setdefault(key, []).append(point)
    stats: dict[str, dict[int, float]] = {"iteration": {}, "second": {}, "time": {}}
    for seed in sorted({s for _, s in runs}):
        adam, sfo = (np.array(sorted(runs[(o, seed)])) for o in ("adam", "sfo"))
        stats["iteration"][seed] = np.log(adam[1:, 3]).mean() - np.log(sfo[1:, 3]).mean()
        horizon = min(adam[-1, 1], sfo[-1, 1])
        times = horizon * np.arange(1, 21) / 20
        at = [c[np.searchsorted(c[:, 1], times, side="right") - 1, 3] for c in (adam, sfo)]
        stats["second"][seed] = np.log(at[0]).mean() - np.log(at[1]).mean()
        stats["time"][seed] = np.log(adam[-1, 1] / adam[-1, 2]) - np.log(sfo[-1, 1] / sfo[-1, 2])
    return stats


def _t_verdict(x: list[float]) -> str:
    from scipy import stats

    x = np.asarray(x)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    if np.all(x < 0) and x.mean() + half < 0:
        return "yes"
    if np.all(x >= 0) and x.mean() - half >= 0:
        return "no"
    return "inconclusive"


def test_the_committed_fig2b_verdicts_recompute_from_its_csv():
    rows = runner.read_results(FIG2B / "results.csv")
    info = json.loads((FIG2B / "run.json").read_text())
    label = "" if info["mode"] == "full" else f" ({info['mode']})"
    table = claims.claims_table((FIG2B / "summary.md").read_text())
    verdicts = {
        line.split(" | ")[0].removeprefix("| "): line.rsplit("**", 2)[1]
        for line in table.splitlines()
        if line.startswith("| Fig. 2b")
    }
    stats = _independent_fig2b_statistics(rows)
    assert len(stats["iteration"]) >= 5 and all(line.endswith(f"**{label} |") for line in
                                                table.splitlines() if line.startswith("| Fig"))  # fmt: skip
    assert verdicts == {
        "Fig. 2b (per iteration)": _t_verdict(list(stats["iteration"].values())),
        "Fig. 2b (per second)": _t_verdict(list(stats["second"].values())),
        "Fig. 2b (time per iteration)": _t_verdict(list(stats["time"].values())),
    }
    verdict_seeds = {int(r["seed"]) for r in rows if r["stage"] == "verdict"}
    assert not verdict_seeds & {int(r["seed"]) for r in rows if r["stage"] == "selection"}


def test_the_fig2b_command_runs_at_the_tiny_size(tmp_path):
    assert fig2b.main(["--out", str(tmp_path), "--tiny"]) == 0
    rows = runner.read_results(tmp_path / "results.csv")
    assert {r["optimizer"] for r in rows} == {"adam", "sfo"}
    assert {int(r["seed"]) for r in rows if r["stage"] == "verdict"} == {0, 1}
    summary = (tmp_path / "summary.md").read_text()
    assert "Fig. 2b (per second)" in summary and "(tiny)" in summary
    assert (tmp_path / "fig2b.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "run.json").read_text())["mode"] == "tiny"
