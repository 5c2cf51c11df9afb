"""``adam-jax bench``: arguments are checked before any work, the JSON record is complete.

Only the command line is tested here; speed is measured by the command itself, never in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "adam_jax", "bench", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--params", "0"], "argument --params: 0 is not >= 1"),
        (["--rounds", "0"], "argument --rounds: 0 is not >= 1"),
        (["--inner", "-2"], "argument --inner: -2 is not >= 1"),
        (["--leaves", "x"], "argument --leaves: 'x' is not an integer"),
        (["--json", "/nonexistent-folder/out.json"], "does not exist"),
    ],
)
def test_bad_arguments_exit_2_before_any_work(args, message):
    result = _bench(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "adam-jax bench on" not in result.stdout  # nothing was measured


def test_json_records_rows_device_and_versions(tmp_path):
    out = tmp_path / "bench.json"
    result = _bench(
        "--cases",
        "one-array",
        "--params",
        "4096",
        "--rounds",
        "1",
        "--inner",
        "1",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["device_kind"] and record["backend"] == "cpu"
    assert set(record["versions"]) == {"adam-jax", "jax", "jaxlib", "optax", "torch"}
    contenders = {row["name"] for row in record["rows"]}
    assert {"optax.adam", "adam_jax.adam"} <= contenders
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no temporary file left


def test_ctrl_c_during_bench_exits_130_with_one_line():
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "adam_jax", "bench", "--cases", "many-leaves", "--rounds", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().startswith("adam-jax bench on")  # measuring has started
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines() == ["adam-jax: interrupted (Ctrl-C)"], err[-2000:]


def test_readme_bench_table_is_the_committed_record_of_this_version():
    """The README's CPU table is generated from results/bench/cpu.json, measured by this version."""
    from importlib import metadata
    from pathlib import Path

    from adam_jax.bench import Row, format_table

    root = Path(__file__).resolve().parent.parent
    record = json.loads((root / "results" / "bench" / "cpu.json").read_text())
    assert record["versions"]["adam-jax"] == metadata.version("adam-jax"), (
        "results/bench/cpu.json was measured by another adam_jax version: re-run "
        "adam-jax bench --json results/bench/cpu.json and regenerate the README table"
    )
    readme = (root / "README.md").read_text()
    start = "<!-- bench table: generated from results/bench/cpu.json -->"
    block = readme[readme.index(start) + len(start) : readme.index("<!-- end of bench table -->")]
    assert block.strip() == format_table([Row(**r) for r in record["rows"]])
