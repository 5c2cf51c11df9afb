"""The committed quick run (results/quick) is what the docs say it is (quick mode, at least 3 seeds,
finished, of this version's data and code). The claims tables of the docs' paper page are
generated from results/ when the site is built (docs/_ext/results_tables.py)."""

import json
from pathlib import Path

from adam_jax.tools.paper import claims

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "results" / "quick"


def test_committed_quick_run_is_described_by_its_run_json():
    info = json.loads((QUICK / "run.json").read_text())
    summary = (QUICK / "summary.md").read_text()
    assert info["mode"] == "quick" and info["status"] == "finished"
    assert len(info["seeds"]) >= 3 and info["figures"] == ["fig1", "fig2", "fig3", "fig4"]
    assert f"(quick run, seeds {', '.join(map(str, info['seeds']))})" in summary
    assert f"adam_jax {info['adam_jax']}, jax {info['jax']}" in summary
    rows = [line for line in claims.claims_table(summary).splitlines() if line.startswith("| Fig")]
    # 13 claims: Fig. 1 left and right each under both AdaGrad readings, Fig. 4 per grid point
    assert len(rows) == 13 and all(f"of {len(info['seeds'])} |" in r for r in rows)


def test_committed_quick_run_is_of_the_current_code():
    """A stale run fails here: the committed quick run used this version's data (the stand-ins'
    descriptions, with their sizes) and this version of adam_jax."""
    import adam_jax
    from adam_jax.tools.paper import runner

    info = json.loads((QUICK / "run.json").read_text())
    summary = (QUICK / "summary.md").read_text()
    assert info["adam_jax"] == adam_jax.__version__
    for ds in runner.load_data(runner.FIGURES, runner.QUICK, None).values():
        assert ds.source in summary, f"results/quick was run on other data than {ds.source!r}"
