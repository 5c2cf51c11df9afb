"""The qualitative claims of Section 6 and the rules that decide them, over seeds.

Every rule is fixed here, in words (``Claim.rule``) and in code, before any result is seen; the
README keeps a dated history of every change and its reason. A rule is never changed to turn a
verdict.

**The one rule.** Each claim is one or more statements of the form "a per-seed statistic x is below
a margin m" (for "A reaches a lower cost than B": x = ln(cost_A / cost_B) and m = 0). Over the n
seeds, with mean x̄ and standard error se = sd(x) / √n (the seed-to-seed spread):

- ``yes`` when every seed has x < m and x̄ + 2·se < m;
- ``no`` when every seed has x ≥ m and x̄ - 2·se ≥ m;
- ``inconclusive`` otherwise: the seeds disagree, or the difference is within 2 standard errors
  (always so with fewer than 2 seeds, where the spread is unknown).

A claim made of several statements is ``yes`` when all are, ``no`` when any is, and
``inconclusive`` otherwise. "k of n seeds" counts the seeds in which every statement holds.
Costs that are not finite count as infinitely bad (x = ±inf).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

import numpy as np

LABELS = {
    "adam": "Adam",
    "adamax": "AdaMax",
    "sgd_nesterov": "SGD Nesterov",
    "adagrad": "AdaGrad",
    "rmsprop": "RMSProp",
    "adadelta": "AdaDelta",
}

NOISE_SE = 2.0  # a difference counts when it exceeds 2 standard errors over seeds
AS_FAST = math.log(1.25)  # "as fast as": final cost at most 25% above the other's (fixed in v1)
VAE_BETA2_NEAR_ONE = 0.9999  # Section 6.4: "values of β2 close to 1"


@dataclasses.dataclass(frozen=True)
class Statement:
    """``name``: per-seed statistic ``x`` (seed -> value), claimed to be below ``margin``."""

    name: str
    x: dict[int, float]
    margin: float = 0.0


def decide(statements: list[Statement]) -> tuple[str, int, int]:
    """(verdict, k, n) by the module's rule: k seeds in which every statement holds, of n."""
    seeds = sorted(set.intersection(*(set(s.x) for s in statements))) if statements else []
    n = len(seeds)
    verdicts = []
    for s in statements:
        x = np.array([s.x[seed] for seed in seeds], np.float64)
        if n < 2:
            verdicts.append("inconclusive")
            continue
        finite = x[np.isfinite(x)]
        mean = float(np.mean(x)) if finite.size == n else float(np.sum(x))  # +-inf dominates
        se = float(np.std(finite, ddof=1) / math.sqrt(n)) if finite.size == n else 0.0
        if np.all(x < s.margin) and mean + NOISE_SE * se < s.margin:
            verdicts.append("yes")
        elif np.all(x >= s.margin) and mean - NOISE_SE * se >= s.margin:
            verdicts.append("no")
        else:
            verdicts.append("inconclusive")
    k = sum(all(s.x[seed] < s.margin for s in statements) for seed in seeds)
    if n == 0:
        return "inconclusive", 0, 0
    if all(v == "yes" for v in verdicts):
        return "yes", k, n
    if any(v == "no" for v in verdicts):
        return "no", k, n
    return "inconclusive", k, n


@dataclasses.dataclass(frozen=True)
class Claim:
    """A paper claim, its rule, what the run measured, and the verdict over seeds."""

    figure: str
    claim: str
    rule: str
    measured: str
    verdict: str  # "yes", "no" or "inconclusive"
    k: int  # seeds in which the claim holds
    n: int  # seeds
    reason: str = ""  # for "no" and "inconclusive": what was measured and the likely reason


# ---------------------------------------------------------------------------------------------
# Reading results.csv rows


def _f(value: str) -> float:
    v = float(value)
    return v if np.isfinite(v) else math.inf


def final_costs(rows: list[dict], panel: str) -> dict[str, dict[int, float]]:
    """optimizer -> seed -> last-epoch training cost of the selected learning rate."""
    last: dict[tuple[str, int], tuple[int, float]] = {}
    for r in rows:
        if r["panel"] == panel and r["selected"] == "1":
            key, epoch = (r["optimizer"], int(r["seed"])), int(r["epoch"])
            if key not in last or epoch > last[key][0]:
                last[key] = (epoch, _f(r["loss"]))
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for (opt, seed), (_, loss) in last.items():
        out[opt][seed] = loss
    return out


def early_costs(rows: list[dict], panel: str) -> dict[str, dict[int, float]]:
    """optimizer -> seed -> mean minibatch cost over the recorded first iterations (selected α)."""
    acc: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in rows:
        if r["panel"] == panel and r["selected"] == "1":
            acc[(r["optimizer"], int(r["seed"]))].append(_f(r["loss"]))
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for (opt, seed), losses in acc.items():
        out[opt][seed] = float(np.mean(losses))
    return out


def vae_table(rows: list[dict]) -> dict[tuple, dict[int, float]]:
    """(bias_correction, beta1, beta2, log10 alpha, epoch) -> seed -> loss (inf if not finite)."""
    out: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["panel"] == "fig4":
            key = (
                bool(int(r["bias_correction"])),
                float(r["beta1"]),
                float(r["beta2"]),
                round(math.log10(float(r["learning_rate"]))),
                int(r["epoch"]),
            )
            out[key][int(r["seed"])] = _f(r["loss"])
    return out


def _log_ratio(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    """seed -> ln(a / b); an infinite a (diverged) gives +inf, an infinite b gives -inf."""
    out = {}
    for seed in set(a) & set(b):
        if math.isinf(a[seed]) and math.isinf(b[seed]):
            out[seed] = 0.0
        elif math.isinf(a[seed]):
            out[seed] = math.inf
        elif math.isinf(b[seed]):
            out[seed] = -math.inf
        else:
            out[seed] = math.log(a[seed] / b[seed])
    return out


def lower(costs: dict[str, dict[int, float]], a: str, b: str) -> Statement:
    """ "a reaches a lower cost than b"."""
    return Statement(f"{a} < {b}", _log_ratio(costs.get(a, {}), costs.get(b, {})))


def as_fast(costs: dict[str, dict[int, float]], a: str, b: str) -> Statement:
    """ "a is as fast as b": a's cost at most 25% above b's."""
    return Statement(f"{a} ≲ {b}", _log_ratio(costs.get(a, {}), costs.get(b, {})), AS_FAST)


def _mean_sd(values: dict[int, float]) -> str:
    x = np.array(list(values.values()), np.float64)
    if not x.size:
        return "n/a"
    if not np.all(np.isfinite(x)):
        return f"{np.sum(~np.isfinite(x))} of {x.size} seeds diverged"
    if x.size == 1:
        return f"{x[0]:.4g}"
    return f"{x.mean():.4g} ± {x.std(ddof=1):.2g}"


def _costs_text(costs: dict[str, dict[int, float]], opts: tuple[str, ...]) -> str:
    return ", ".join(f"{LABELS.get(o, o)} {_mean_sd(costs.get(o, {}))}" for o in opts)


def _reason(verdict: str, statements: list[Statement], hint: str) -> str:
    """The sentence for a ``no`` or ``inconclusive`` row: which statement failed how, and why."""
    if verdict == "yes":
        return ""
    parts = []
    for s in statements:
        v, k, n = decide([s])
        if v != "yes":
            x = np.array(list(s.x.values()))
            what = {"no": "fails in every seed", "inconclusive": "is not settled"}[v]
            spread = (
                f"mean {np.mean(x):+.3g}, 2·se {NOISE_SE * np.std(x, ddof=1) / math.sqrt(n):.2g}"
                if n >= 2 and np.all(np.isfinite(x))
                else f"values {', '.join(f'{val:+.3g}' for val in x)}"
            )
            parts.append(
                f"'{s.name}' {what} (holds in {k} of {n} seeds; statistic {spread}, "
                f"margin {s.margin:+.3g})"
            )
    return "; ".join(parts) + ". Likely reason: " + hint


def _claim(figure, claim, rule, measured, statements, hint) -> Claim:
    verdict, k, n = decide(statements)
    return Claim(figure, claim, rule, measured, verdict, k, n, _reason(verdict, statements, hint))


# ---------------------------------------------------------------------------------------------
# The claims

LOWER_RULE = "ln(cost A / cost B) < 0 in every seed and its mean + 2 se < 0"


def check(rows: list[dict], few: int, many: int) -> list[Claim]:
    """Evaluate every claim whose figure is present in ``rows`` (all seeds in ``rows``)."""
    claims = []
    panels = {r["panel"] for r in rows}
    small = "the stand-in data set and the epoch budget are much smaller than the paper's"

    if "fig1_mnist" in panels:
        c = final_costs(rows, "fig1_mnist")
        st = [as_fast(c, "adam", "sgd_nesterov"), lower(c, "adam", "adagrad"),
              lower(c, "sgd_nesterov", "adagrad")]  # fmt: skip
        claims.append(_claim(
            "Fig. 1 left",
            "Logistic regression (MNIST): Adam converges as fast as SGD-Nesterov, and both "
            "faster than AdaGrad",
            "final cost: Adam ≤ 1.25 × SGD-Nesterov, Adam < AdaGrad and SGD-Nesterov < AdaGrad "
            "(each: every seed, and mean ± 2 se, on the ln cost ratio)",
            "final training cost: " + _costs_text(c, ("adam", "sgd_nesterov", "adagrad")),
            st, "a convex problem with a tuned α: the three optimizers end close together; "
            + small,
        ))  # fmt: skip
    if "fig1_imdb" in panels:
        c = final_costs(rows, "fig1_imdb")
        st = [lower(c, "adagrad", "sgd_nesterov"), as_fast(c, "adam", "adagrad")]
        claims.append(_claim(
            "Fig. 1 right",
            "Sparse bag-of-words logistic regression (50% input dropout): AdaGrad beats "
            "SGD-Nesterov, and Adam converges as fast as AdaGrad",
            "final cost: AdaGrad < SGD-Nesterov and Adam ≤ 1.25 × AdaGrad (every seed, and "
            "mean ± 2 se, on the ln cost ratio)",
            "final training cost: "
            + _costs_text(c, ("adam", "adagrad", "sgd_nesterov", "rmsprop")),
            st, "the generated corpus is not IMDB: its sparsity pattern and label noise decide "
            "how much AdaGrad's per-feature steps help; " + small,
        ))  # fmt: skip
    if "fig2" in panels:
        c = final_costs(rows, "fig2")
        others = ("adagrad", "rmsprop", "sgd_nesterov", "adadelta")
        claims.append(_claim(
            "Fig. 2",
            "MLP with dropout (MNIST): Adam reaches a lower training cost than AdaGrad, RMSProp, "
            "SGD-Nesterov and AdaDelta",
            "final cost: Adam < each of the four (every seed, and mean ± 2 se, on the ln cost "
            "ratio)",
            "final training cost: " + _costs_text(c, ("adam", *others)),
            [lower(c, "adam", o) for o in others],
            "Adam and RMSProp differ only by momentum and bias correction, which matter little "
            "once α is tuned on a small data set; " + small,
        ))  # fmt: skip
    if "fig3_iter" in panels:
        c = early_costs(rows, "fig3_iter")
        claims.append(_claim(
            "Fig. 3 left",
            "CNN (CIFAR-10), first 3 epochs: Adam and AdaGrad make faster progress than "
            "SGD-Nesterov",
            "mean minibatch cost over the iterations of the first 3 epochs: Adam < SGD-Nesterov "
            "and AdaGrad < SGD-Nesterov (every seed, and mean ± 2 se, on the ln ratio)",
            "mean cost over the first 3 epochs: "
            + _costs_text(c, ("adam", "adagrad", "sgd_nesterov")),
            [lower(c, "adam", "sgd_nesterov"), lower(c, "adagrad", "sgd_nesterov")],
            "with α tuned for the final cost, SGD-Nesterov's selected α can be large enough to "
            "drop as fast early on; " + small,
        ))  # fmt: skip
    if "fig3" in panels:
        c = final_costs(rows, "fig3")
        claims.append(_claim(
            "Fig. 3 right",
            "CNN (CIFAR-10): at the end Adam and SGD-Nesterov are below AdaGrad",
            "final cost: Adam < AdaGrad and SGD-Nesterov < AdaGrad (every seed, and mean ± 2 se, "
            "on the ln cost ratio)",
            "final training cost: " + _costs_text(c, ("adam", "adagrad", "sgd_nesterov")),
            [lower(c, "adam", "adagrad"), lower(c, "sgd_nesterov", "adagrad")],
            "AdaGrad's shrinking steps only fall behind over long training; " + small,
        ))  # fmt: skip
    if "fig4" in panels:
        claims += _vae_claims(vae_table(rows), few, many)
    return claims


def best_over_alpha(
    table: dict[tuple, dict[int, float]], bc: bool, b1s, b2s, epoch: int
) -> dict[int, float]:
    """seed -> lowest loss over α (and the given β1s and β2s) after ``epoch`` epochs."""
    keys = [k for k in table if k[0] == bc and k[1] in b1s and k[2] in b2s and k[4] == epoch]
    seeds = set.intersection(*(set(table[k]) for k in keys)) if keys else set()
    return {s: min(table[k][s] for k in keys) for s in seeds}


def unstable_runs(table: dict[tuple, dict[int, float]], bc: bool, b2: float, epoch: int):
    """seed -> number of (β1, α) runs that are unstable by ``epoch``: a loss that is not finite or
    above the initial loss at any epoch up to ``epoch``."""
    runs = {k[:4] for k in table if k[0] == bc and k[2] == b2}
    seeds = set.intersection(*(set(v) for v in table.values())) if table else set()
    out = {}
    for s in seeds:
        count = 0
        for run in runs:
            initial = table[(*run, 0)][s]
            losses = [table[(*run, e)][s] for e in range(1, epoch + 1) if (*run, e) in table]
            count += any(math.isinf(v) or v > initial for v in losses)
        out[s] = count
    return out


def _vae_claims(table, few: int, many: int) -> list[Claim]:
    claims = []
    b1s = (0.0, 0.9)
    hint = (
        "without correction v̂ is biased toward 0 for thousands of steps at β2 = 0.9999, so the "
        "early steps are larger; at a small α that speeds training up, and the digits stand-in "
        "has only 14 steps per epoch, so the run ends inside that early phase"
    )
    for epoch in (few, many):
        stmts, parts = [], []
        for b1 in b1s:
            with_bc = best_over_alpha(table, True, (b1,), (VAE_BETA2_NEAR_ONE,), epoch)
            without = best_over_alpha(table, False, (b1,), (VAE_BETA2_NEAR_ONE,), epoch)
            stmts.append(Statement(f"β1={b1}: with < without", _log_ratio(with_bc, without)))
        for b1 in b1s:
            for b2 in sorted({k[2] for k in table}):
                w = _mean_sd(best_over_alpha(table, True, (b1,), (b2,), epoch))
                wo = _mean_sd(best_over_alpha(table, False, (b1,), (b2,), epoch))
                parts.append(f"β1={b1}, β2={b2}: {w} vs {wo}")
        claims.append(_claim(
            f"Fig. 4 (best over α), {epoch} epochs",
            "VAE, β2 close to 1 (0.9999): the best loss over α is lower with bias correction "
            "than without, for β1 = 0 and 0.9",
            "per β1: ln(best-over-α loss with / without correction) < 0 (every seed, and mean "
            "± 2 se)",
            "best-over-α loss with vs without correction: " + "; ".join(parts),
            stmts, hint,
        ))  # fmt: skip
    counts = {
        bc: {b2: unstable_runs(table, bc, b2, few) for b2 in sorted({k[2] for k in table})}
        for bc in (True, False)
    }
    near = VAE_BETA2_NEAR_ONE
    diff = {
        s: counts[True][near][s] - counts[False][near][s]
        for s in set(counts[True].get(near, {})) & set(counts[False].get(near, {}))
    }
    claims.append(_claim(
        f"Fig. 4 (stability), {few} epochs",
        "VAE: without bias correction, β2 close to 1 (0.9999) is unstable, especially in the "
        "first epochs",
        "at β2 = 0.9999, unstable runs (loss not finite or above its initial value at any epoch "
        f"up to {few}) over the 10 (β1, α): fewer with correction than without (every seed, and "
        "mean ± 2 se, on the difference of counts)",
        "unstable runs of 10, with / without correction: " + "; ".join(
            f"β2={b2}: {_mean_sd(counts[True][b2])} / {_mean_sd(counts[False][b2])}"
            for b2 in counts[True]
        ),
        [Statement("unstable with - without < 0", {s: float(v) for s, v in diff.items()})],
        hint,
    ))  # fmt: skip
    good = best_over_alpha(table, True, b1s, (0.999, 0.9999), many)
    rest = {
        "with correction, β2=0.99": best_over_alpha(table, True, b1s, (0.99,), many),
        "without correction": best_over_alpha(table, False, b1s, (0.99, 0.999, 0.9999), many),
    }
    other = {
        s: min(v[s] for v in rest.values()) for s in good if all(s in v for v in rest.values())
    }
    claims.append(_claim(
        f"Fig. 4 (best setting), {many} epochs",
        "VAE: the best results need small 1-β2 (β2 ≥ 0.999) and bias correction",
        "ln(best loss with correction at β2 ≥ 0.999 / best of every other setting) < 0 (every "
        "seed, and mean ± 2 se)",
        f"best loss with correction at β2 ≥ 0.999: {_mean_sd(good)}; "
        + "; ".join(f"{k}: {_mean_sd(v)}" for k, v in rest.items()),
        [Statement("small 1-β2 with correction is best", _log_ratio(good, other))],
        "at the best α the settings end close together on the small digits set; " + hint,
    ))  # fmt: skip
    return claims


def summary_markdown(claims: list[Claim], header: str, footer: str) -> str:
    """The ``summary.md`` text: a header, the claims table, the reasons, then ``footer``."""
    lines = [
        header,
        "",
        "| figure | claim of the paper | rule (fixed in advance) | measured (mean ± sd over "
        "seeds) | seeds | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in claims:
        lines.append(
            f"| {c.figure} | {c.claim} | {c.rule} | {c.measured} | {c.k} of {c.n} | "
            f"**{c.verdict}** |"
        )
    counts = {v: sum(c.verdict == v for c in claims) for v in ("yes", "no", "inconclusive")}
    lines += [
        "",
        f"{counts['yes']} of {len(claims)} claims reproduced in this run, {counts['no']} not "
        f"reproduced, {counts['inconclusive']} inconclusive.",
    ]
    explained = [c for c in claims if c.verdict != "yes"]
    if explained:
        lines += ["", "Why the other claims are not `yes`:", ""]
        lines += [f"- **{c.figure}** ({c.verdict}): {c.reason}" for c in explained]
    return "\n".join([*lines, "", footer]).rstrip() + "\n"


def claims_table(summary: str) -> str:
    """The claims table and the verdict count of a ``summary.md`` (what the README quotes)."""
    lines = summary.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| figure |"))
    end = next(i for i, line in enumerate(lines) if "claims reproduced in this run" in line)
    return "\n".join(lines[start : end + 1])
