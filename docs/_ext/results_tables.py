"""The measured tables of the docs, generated from ``results/`` (and the test suite) at build time.

A page asks for a table with the ``results-table`` directive::

    ```{results-table} bench results/bench/cpu.json
    ```

and gets the table, followed by one line saying where it came from: the file, the date of the
measurement and the versions it ran with. Nothing measured is typed into a page, so a page cannot
drift from its record: re-running the measurement and rebuilding the docs is the whole update.

Kinds of table:

- ``claims-current``: where each claim stands: the verdicts of the full runs at paper-equivalent
  iterations, and for a figure without one the quick run's, labelled, with the reason.
- ``claims-quick``: the claims table of the committed quick run (``results/quick``).
- ``claims FOLDER``: the claims table of the run in FOLDER (``results/fig2b``), or of a Markdown
  file of claims named directly (a part of an unfinished run).
- ``claims-superseded``: the claims of every committed full run decided by rules v2, one table:
  the ``results/full_*`` folders without a ``results.csv`` (rules v3 commits every run's CSV, so
  a v3 full run is shown with ``claims FOLDER`` instead).
- ``paper-timing``: the wall clock and CPU time of each committed run, from its ``run.json``.
- ``bench FILE``: a ``adam-jax bench --json`` record (``results/bench/*.json``).
- ``bench-8bit-rounds FILE``: the per-round compile ratios of an ``adam-jax bench --8bit`` record.
- ``monitor``: the monitor's cost, from ``results/monitor/cpu-run*.txt``
  (``benchmarks/monitor_overhead.py``'s output).
- ``errors``: what a user sees for each bad input (``tests/test_errors.py`` runs every case).
- ``reliability``: the fault families the suite tries, with the number of cases pytest collects.
- ``usage COMMAND``: the usage line of an ``adam-jax`` subcommand, from its argument parser.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

REPO = Path(__file__).resolve().parents[2]


def _date(stamp: str) -> str:
    return stamp[:10]


def _versions(versions: dict) -> str:
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def _run_provenance(folder: Path) -> str:
    info = json.loads((folder / "run.json").read_text())
    sittings = info.get("sittings") or []
    dates = sorted({_date(s["start"]) for s in sittings if s.get("start")})
    dates = dates or ([_date(info["start"])] if info.get("start") else [])
    versions = {k: info[k] for k in ("adam_jax", "jax", "jaxlib", "optax") if info.get(k)}
    return (
        f"`{folder.relative_to(REPO).as_posix()}`: `{info['command']}`, "
        f"{info['mode']} mode, seeds {', '.join(map(str, info['seeds']))}, "
        f"measured {' and '.join(dates) or 'on an unrecorded date'} on {info['device']} "
        f"({info.get('cpu_count', '?')} cores), Python {info.get('python', '?')}, "
        f"{_versions(versions).replace('adam_jax', 'adam-jax')}"
    )


def claims_of(folder: str) -> str:
    """The claims table of ``folder``'s summary.md, or of a Markdown file named directly (a part
    of an unfinished run), with the provenance of the run.json beside it."""
    from adam_jax.tools.paper import claims

    path = REPO / folder
    summary = path if path.suffix == ".md" else path / "summary.md"
    table = claims.claims_table(summary.read_text())
    return f"{table}\n\nSource: {_run_provenance(summary.parent)}."


def claims_quick() -> str:
    return claims_of("results/quick")


def _figure_of(claim_cell: str) -> str:
    """The figure a claim row names: ``Fig. 4`` of ``Fig. 4 / Sec. 6.4 (every grid point)``,
    ``Fig. 2b`` of ``Fig. 2b (per second)``."""
    return re.match(r"Fig\. \w+", claim_cell).group(0)


def _full_runs(v3: bool) -> list[Path]:
    """The committed ``results/full_*`` runs of rules v3 (each commits its ``results.csv``), or
    those of the earlier rules."""
    folders = sorted(REPO.glob("results/full_*"))
    return [f for f in folders if (f / "results.csv").exists() == v3]


def _claim_rows(folder: Path) -> list[list[str]]:
    """The cells of each claim row of ``folder``'s summary.md: figure, claim, rule, measured,
    seeds, verdict."""
    from adam_jax.tools.paper import claims

    table = claims.claims_table((folder / "summary.md").read_text())
    return [line[2:-2].split(" | ") for line in table.splitlines() if line.startswith("| Fig")]


def claims_superseded() -> str:

    rows = [
        "| figure | claim of the paper | measured (mean ± sd over seeds) | seeds | verdict | run |",
        "|---|---|---|---|---|---|",
    ]
    sources = []
    for folder in _full_runs(v3=False):
        for figure, claim, _rule, measured, seeds, verdict in _claim_rows(folder):
            run = f"`{folder.relative_to(REPO).as_posix()}`"
            rows.append(f"| {figure} | {claim} | {measured} | {seeds} | {verdict} | {run} |")
        sources.append(f"- {_run_provenance(folder)}")
    return "\n".join(rows) + "\n\nSources:\n\n" + "\n".join(sources)


def _killed_sittings(sittings: list[dict]) -> str:
    """What the totals leave out: an earlier sitting still marked ``running`` was killed
    outright (no handler ran). Its times count up to its last finished group of runs, or not at
    all where the version that ran it recorded them only at the end."""
    killed = [s for s in sittings[:-1] if s.get("status") == "running"]
    unrecorded = sum(not s.get("figure_seconds") for s in killed)
    parts = []
    if len(killed) > unrecorded:
        parts.append(f"{len(killed) - unrecorded} killed, counted up to its last finished runs")
    if unrecorded:
        parts.append(f"{unrecorded} killed before it recorded any time, not counted")
    return "".join(f"; {p}" for p in parts)


# Why a figure's claims stand on the quick run only (no full run at paper-equivalent
# iterations committed), shown beside them in ``claims-current``. A figure of the quick run
# without a full run and without a reason here stops the docs build.
QUICK_ONLY_REASONS = {
    "Fig. 2": "its full run is about 56 CPU-hours on this CPU (6 PFLOP, "
    "`results/FULL_RUN_COST.md`), more than a CPU run here may take (3 hours): it waits for a device",
    "Fig. 2b": "quick by design: 280 iterations on the 14 minibatches of the digits, with SFO "
    "written from its paper (`results/RULES.md`, part 5)",
    "Fig. 3": "its full run is about 3,300 CPU-hours on this CPU (97 PFLOP, "
    "`results/FULL_RUN_COST.md`): it waits for a device",
}
QUICK_RUNS = ("results/quick", "results/fig2b")


def claims_current() -> str:
    """Where each claim of the paper stands: the verdict of its figure's full run at
    paper-equivalent iterations (a ``results/full_*`` folder with its ``results.csv``, rules
    v3) where there is one, else the quick run's, labelled quick, with the reason."""
    rows = []
    for folder in _full_runs(v3=True):
        for figure, claim, _rule, _measured, seeds, verdict in _claim_rows(folder):
            rows.append((figure, claim, seeds, verdict, f"`{folder.relative_to(REPO).as_posix()}`"))
    decided = {_figure_of(r[0]) for r in rows}
    for name in QUICK_RUNS:
        for figure, claim, _rule, _measured, seeds, verdict in _claim_rows(REPO / name):
            fig = _figure_of(figure)
            if fig in decided:
                continue
            if fig not in QUICK_ONLY_REASONS:
                raise ValueError(f"{fig} has no full run and no reason in QUICK_ONLY_REASONS")
            rows.append((figure, claim, seeds, verdict, f"`{name}`: {QUICK_ONLY_REASONS[fig]}"))
    order = {"Fig. 1": 0, "Fig. 2": 1, "Fig. 2b": 2, "Fig. 3": 3, "Fig. 4": 4}
    rows.sort(key=lambda r: order.get(_figure_of(r[0]), len(order)))  # stable within a figure
    lines = [
        "| figure | claim of the paper | seeds | verdict | decided by |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(r)} |" for r in rows),
    ]
    return "\n".join(lines)


def paper_timing() -> str:
    rows = [
        "| run | figures | seeds | training wall clock per figure (s) | CPU s per figure "
        "| whole run, wall clock | measured | adam-jax, jax |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for folder in [REPO / "results" / "quick", *sorted(REPO.glob("results/full_*"))]:
        info = json.loads((folder / "run.json").read_text())
        wall = info.get("figure_seconds", {})
        cpu = info.get("figure_cpu_seconds", {})
        dates = sorted({_date(s["start"]) for s in info.get("sittings", []) if s.get("start")})
        total = info.get("wall_seconds")
        total_text = f"{total / 60:.1f} min" if total else "not recorded"
        sittings = info.get("sittings", [])
        if len(sittings) > 1:
            total_text += f" ({len(sittings)} sittings{_killed_sittings(sittings)})"
        rows.append(
            f"| `{folder.relative_to(REPO).as_posix()}` | {', '.join(info['figures'])} "
            f"| {len(info['seeds'])} | {', '.join(f'{k} {v:.0f}' for k, v in wall.items())} "
            f"| {', '.join(f'{k} {v:.0f}' for k, v in cpu.items()) or 'not recorded'} "
            f"| {total_text} | {', '.join(dates)} on {info['device']}, {info.get('cpu_count', '?')}"
            f" cores | {info['adam_jax']}, {info['jax']} |"
        )
    return "\n".join(rows)


def _bench_record(name: str) -> dict:
    return json.loads((REPO / name).read_text())


def _bench_provenance(name: str, record: dict) -> str:
    load = record.get("load_average_at_start")
    load_text = f", load average {load:.1f} at the start" if load is not None else ""
    return (
        f"Source: `{name}`, measured {_date(record['date'])} by `{record['command']}` on "
        f"{record['device_kind']} ({record['backend']}){load_text}; "
        f"{_versions(record['versions'])}."
    )


def bench(name: str) -> str:
    from adam_jax.tools import bench as bench_tool

    record = _bench_record(name)
    if "rows_8bit" in record:
        table = bench_tool.format_8bit_table([bench_tool.Row8(**r) for r in record["rows_8bit"]])
    else:
        table = bench_tool.format_table([bench_tool.Row(**r) for r in record["rows"]])
    return f"{table}\n\n{_bench_provenance(name, record)}"


def bench_8bit_rounds(name: str) -> str:
    record = _bench_record(name)
    rounds = record["compile_s_by_round"]
    ratios = [f"{a / b:.2f}" for a, b in zip(rounds["8bit"], rounds["float32"], strict=True)]
    return (
        f"Compile time, 8-bit over float32, round by round: {', '.join(ratios)} "
        f"(`{name}`, {_date(record['date'])})."
    )


def monitor() -> str:
    runs = sorted((REPO / "results" / "monitor").glob("cpu-run*.txt"))
    ratios: dict[tuple[str, str], list[str]] = {}
    headers = []
    for run in runs:
        lines = run.read_text().splitlines()
        headers.append(f"- `{run.relative_to(REPO).as_posix()}`: {lines[0]}")
        for line in lines:
            found = re.match(r"(\S.*?)\s{2,}(train step|update only)\s+\S+\s+(\d+\.\d+)\s+\[", line)
            if found:
                ratios.setdefault((found[1], found[2]), []).append(found[3])
    labels = {
        "monitor (default)": "`monitor(tx)` (the default)",
        "monitor every=1": "`every=1`",
        "monitor every=10": "`every=10`",
        "monitor every=100": "`every=100`",
    }
    table = [
        f"| variant | training step, median ratio ({len(runs)} runs) | optimizer update alone |",
        "|---|---|---|",
    ] + [
        f"| {label} | {', '.join(ratios[(name, 'train step')])} | "
        f"{', '.join(ratios[(name, 'update only')])} |"
        for name, label in labels.items()
    ]
    return "\n".join(table) + "\n\nSources (each file's first line):\n\n" + "\n".join(headers)


def _tests_module(name: str):
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import importlib

    return importlib.import_module(f"tests.{name}")


def errors() -> str:
    module = _tests_module("test_errors")
    return (
        "Set-up:\n\n```python\nimport jax\nimport jax.numpy as jnp\nimport optax\n\n"
        f"import adam_jax\n\n{module.SETUP.strip()}\n```\n\n{module.markdown_table()}"
    )


_pending: dict[str, Future] = {}


def _start_reliability(app: Sphinx) -> None:
    """Collecting the suite takes a while (pytest imports every test module in a subprocess):
    start it when the build starts, so that it runs while the other pages are read."""
    if "reliability" not in _pending:
        module = _tests_module("test_reliability_table")
        _pending["reliability"] = ThreadPoolExecutor(1).submit(module.table)


def reliability() -> str:
    if "reliability" not in _pending:
        return _tests_module("test_reliability_table").table()
    return _pending.pop("reliability").result()


@contextlib.contextmanager
def _environ(**values: str):
    import os

    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def usage(command: str) -> str:
    from adam_jax.tools import cli

    out = io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.suppress(SystemExit),
        _environ(COLUMNS="80"),
    ):
        cli.build_parser().parse_args([command, "--help"])
    text = out.getvalue()
    synopsis = text.split("\n\n", 1)[0]
    return f"```text\n{synopsis}\n```"


GENERATORS = {
    "claims-current": claims_current,
    "claims-quick": claims_quick,
    "claims": claims_of,
    "claims-superseded": claims_superseded,
    "paper-timing": paper_timing,
    "bench": bench,
    "bench-8bit-rounds": bench_8bit_rounds,
    "monitor": monitor,
    "errors": errors,
    "reliability": reliability,
    "usage": usage,
}


class ResultsTable(SphinxDirective):
    """``{results-table} KIND [ARGUMENT]``: the generated Markdown, parsed in place."""

    required_arguments = 1
    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        kind, *args = self.arguments
        if kind not in GENERATORS:
            raise self.error(f"unknown results-table kind {kind!r}; known: {sorted(GENERATORS)}")
        for arg in args:
            if (REPO / arg).exists():
                self.env.note_dependency(str(REPO / arg))
        markdown = GENERATORS[kind](*args)
        container = nodes.container(classes=["results-table"])
        self.state.nested_parse(
            StringList(markdown.splitlines(), source=self.get_source_info()[0]),
            self.content_offset,
            container,
        )
        return [container]


def setup(app: Sphinx) -> dict:
    app.add_directive("results-table", ResultsTable)
    app.connect("builder-inited", _start_reliability)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
