"""Every verdict of a committed run recomputed from its committed results.csv.

For each folder of results/ that holds a results.csv: the claims table of its summary.md (every
rule, number, seed count and verdict) is what ``claims.check`` computes from the CSV now, and a
run that is not the full run labels every verdict with its mode.
"""

import json
import zlib
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
    many = None if info.get("few_epochs_only") else epochs["fig4_many"]
    recomputed = claims.check(rows, epochs["fig4_few"], many)
    expected = claims.claims_table(claims.summary_markdown(recomputed, "", "", info["mode"]))
    assert claims.claims_table((folder / "summary.md").read_text()) == expected
    assert {r["stage"] for r in rows} == {"selection", "verdict"}
    assert not {int(r["seed"]) for r in rows if r["stage"] == "verdict"} & {
        int(r["seed"]) for r in rows if r["stage"] == "selection"
    }


@pytest.mark.parametrize("folder", RUNS, ids=[p.name for p in RUNS])
def test_committed_csv_is_small_and_labelled(folder):
    # guards on the repository's size. Git stores a file compressed, so the compressed size is
    # what a run adds to every clone: the full Fig. 1 with its six panels' grids is 6.2 MB on disk,
    # 0.44 MB compressed; Fig. 4 after 100 epochs is about 9 MB, about 0.6 MB compressed.
    data = (folder / "results.csv").read_bytes()
    assert len(data) < 16_000_000
    assert len(zlib.compress(data, 6)) < 1_000_000
    info = json.loads((folder / "run.json").read_text())
    table = claims.claims_table((folder / "summary.md").read_text())
    verdicts = [line for line in table.splitlines() if line.startswith("| Fig")]
    assert verdicts
    label = "" if info["mode"] == "full" else f" ({info['mode']})"
    assert all(line.endswith(f"**{label} |") for line in verdicts)


def test_the_quick_run_is_committed_with_its_csv():
    assert REPO / "results" / "quick" in RUNS


def test_the_full_fig1_run_is_a_finished_rules_v3_run():
    """``results/full_fig1``: the full Fig. 1 under rules v3, finished. Every panel (the digits,
    the corpus with and without dropout) has every optimizer's selection runs on the selection
    seeds and its 5 verdict runs at the full epoch count, and its summary decides Fig. 1 both
    ways (AdaGrad at a constant α and at α/√t) on each panel, and once more with every optimizer
    at a constant α on each panel."""
    folder = REPO / "results" / "full_fig1"
    info = json.loads((folder / "run.json").read_text())
    assert info["mode"] == "full" and info["status"] == "finished" and len(info["seeds"]) >= 5
    rows = runner.read_results(folder / "results.csv")
    for panel in (p for p in runner.PANELS if p.figure == "fig1"):
        last = [
            r
            for r in rows
            if r["panel"] == panel.panel and r["epoch"] == str(runner.FULL.epochs[panel.panel])
        ]
        for opt in panel.optimizers:
            mine = [r for r in last if r["optimizer"] == opt]
            verdict = {r["seed"] for r in mine if r["stage"] == "verdict"}
            assert verdict == {str(s) for s in info["seeds"]}, (panel.panel, opt)
            assert any(r["stage"] == "selection" for r in mine), (panel.panel, opt)
    table = claims.claims_table((folder / "summary.md").read_text())
    assert table.count("| Fig. 1 left") == 3 and table.count("| Fig. 1 right") == 6
    assert "| Fig. 1 left (every optimizer at a constant α) |" in table
    assert "| Fig. 1 right (every optimizer at a constant α) |" in table
    assert "| Fig. 1 right, no dropout (every optimizer at a constant α) |" in table
