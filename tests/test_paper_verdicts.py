"""Every verdict of a committed run recomputed from its committed results.csv.

For each folder of results/ that holds a results.csv: the claims table of its summary.md (every
rule, number, seed count and verdict) is what ``claims.check`` computes from the CSV now, and a
run that is not the full run labels every verdict with its mode.
"""

import json
from pathlib import Path

import pytest

from adam_jax.tools.paper import claims, runner

REPO = Path(__file__).resolve().parents[1]
RUNS = sorted(p.parent for p in REPO.glob("results/*/results.csv"))


@pytest.mark.parametrize("folder", RUNS, ids=[p.name for p in RUNS])
def test_every_verdict_recomputes_from_the_committed_csv(folder):
    info = json.loads((folder / "run.json").read_text())
    rows = runner.read_results(folder / "results.csv")
    epochs = runner.BUDGETS[info["mode"]].epochs
    recomputed = claims.check(rows, epochs["fig4_few"], epochs["fig4_many"])
    expected = claims.claims_table(claims.summary_markdown(recomputed, "", "", info["mode"]))
    assert claims.claims_table((folder / "summary.md").read_text()) == expected
    assert {r["stage"] for r in rows} == {"selection", "verdict"}
    assert not {int(r["seed"]) for r in rows if r["stage"] == "verdict"} & {
        int(r["seed"]) for r in rows if r["stage"] == "selection"
    }


@pytest.mark.parametrize("folder", RUNS, ids=[p.name for p in RUNS])
def test_committed_csv_is_small_and_labelled(folder):
    assert (folder / "results.csv").stat().st_size < 5_000_000
    info = json.loads((folder / "run.json").read_text())
    table = claims.claims_table((folder / "summary.md").read_text())
    verdicts = [line for line in table.splitlines() if line.startswith("| Fig")]
    assert verdicts
    label = "" if info["mode"] == "full" else f" ({info['mode']})"
    assert all(line.endswith(f"**{label} |") for line in verdicts)


def test_the_quick_run_is_committed_with_its_csv():
    assert REPO / "results" / "quick" in RUNS


UNFINISHED = sorted(p.parent for p in REPO.glob("results/unfinished/*/fig1_left.md"))


@pytest.mark.parametrize("folder", UNFINISHED, ids=[p.name for p in UNFINISHED])
def test_unfinished_full_run_fig1_left_recomputes_from_its_csv(folder):
    """A full run stopped before its end (kept for ``--resume``): its Fig. 1 left panel finished
    (every optimizer's selection and 5 verdict seeds, 45 paper epochs of 469 iterations), and the
    committed Fig. 1 left table is what ``claims.check`` computes from those rows now."""
    info = json.loads((folder / "run.json").read_text())
    assert info["mode"] == "full" and info["status"] == "interrupted"
    rows = [r for r in runner.read_results(folder / "results.csv") if r["panel"] == "fig1_mnist"]
    last = [r for r in rows if r["epoch"] == str(runner.FULL.epochs["fig1_mnist"])]
    optimizers = next(p.optimizers for p in runner.PANELS if p.panel == "fig1_mnist")
    for opt in optimizers:
        verdict_seeds = {
            r["seed"] for r in last if r["optimizer"] == opt and r["stage"] == "verdict"
        }
        assert verdict_seeds == {str(s) for s in info["seeds"]}
    epochs = runner.FULL.epochs
    recomputed = claims.check(rows, epochs["fig4_few"], epochs["fig4_many"])
    expected = claims.claims_table(claims.summary_markdown(recomputed, "", ""))
    assert claims.claims_table((folder / "fig1_left.md").read_text()) == expected
    assert expected.count("| Fig. 1 left") == 2
