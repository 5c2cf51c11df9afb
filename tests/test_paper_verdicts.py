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
