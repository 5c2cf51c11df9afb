"""The committed quick run (results/quick) and the README's claims table agree, and the committed
run is what the README says it is (quick mode, at least 3 seeds, finished)."""

import json
from pathlib import Path

from adam_jax.tools.paper import claims

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "results" / "quick"
START = "<!-- claims table: generated from results/quick/summary.md -->"
END = "<!-- end of claims table -->"


FULL_START = "<!-- full-run claims: generated from results/full_*/summary.md -->"
FULL_END = "<!-- end of full-run claims -->"


def readme_block(start: str = START, end: str = END) -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index(start) + len(start) : text.index(end)].strip()


def full_runs_table() -> str:
    """The claims of every committed full run (results/full_*), one table (the rules are the
    quick table's)."""
    rows = [
        "| figure | claim of the paper | measured (mean ± sd over seeds) | seeds | verdict | run |",
        "|---|---|---|---|---|---|",
    ]
    for folder in sorted(REPO.glob("results/full_*")):
        for line in claims.claims_table((folder / "summary.md").read_text()).splitlines():
            if line.startswith("| Fig"):
                figure, claim, _rule, measured, seeds, verdict = line[2:-2].split(" | ")
                run = f"`{folder.relative_to(REPO).as_posix()}`"
                rows.append(f"| {figure} | {claim} | {measured} | {seeds} | {verdict} | {run} |")
    return "\n".join(rows)


def test_readme_claims_table_is_the_committed_summarys():
    table = claims.claims_table((QUICK / "summary.md").read_text())
    assert readme_block() == table, (
        "README's claims table differs from results/quick/summary.md: paste "
        "adam_jax.tools.paper.claims.claims_table(summary) between the markers"
    )


def test_committed_quick_run_is_described_by_its_run_json():
    info = json.loads((QUICK / "run.json").read_text())
    summary = (QUICK / "summary.md").read_text()
    assert info["mode"] == "quick" and info["status"] == "finished"
    assert len(info["seeds"]) >= 3 and info["figures"] == ["fig1", "fig2", "fig3", "fig4"]
    assert f"(quick run, seeds {', '.join(map(str, info['seeds']))})" in summary
    assert f"adam_jax {info['adam_jax']}, jax {info['jax']}" in summary
    rows = [line for line in claims.claims_table(summary).splitlines() if line.startswith("| Fig")]
    assert len(rows) == 9 and all(f"of {len(info['seeds'])} |" in r for r in rows)


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


def test_readme_full_run_table_is_the_committed_summaries():
    assert readme_block(FULL_START, FULL_END) == full_runs_table(), (
        "README's full-run table differs from results/full_*/summary.md: regenerate it with "
        "python -m tests.test_paper_results"
    )


if __name__ == "__main__":  # write both generated tables into the README
    readme = REPO / "README.md"
    text = readme.read_text()
    for start, end, table in [
        (START, END, claims.claims_table((QUICK / "summary.md").read_text())),
        (FULL_START, FULL_END, full_runs_table()),
    ]:
        text = (
            text[: text.index(start) + len(start)] + "\n" + table + "\n" + text[text.index(end) :]
        )
    readme.write_text(text)
