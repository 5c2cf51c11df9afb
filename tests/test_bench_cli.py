"""``adam-jax bench``: arguments are checked before any work, the cases are the documented ones,
and the JSON record is complete.

Only the command line is tested here; speed is measured by the command itself, never in tests.
Runs use tiny sizes (``--params``, ``--leaves``, one round of one step).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import operator
import subprocess
import sys

import pytest

import adam_jax
from adam_jax.tools import bench, cli, interrupt

# torch is in the test extra on Python < 3.12 only; without it the bench times no torch contender.
HAVE_TORCH = importlib.util.find_spec("torch") is not None
TINY = ["--params", "4096", "--leaves", "3", "--rounds", "1", "--inner", "1"]


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
        (["--leaves", "0"], "argument --leaves: 0 is not >= 1"),
        (["--rounds", "0"], "argument --rounds: 0 is not >= 1"),
        (["--inner", "-2"], "argument --inner: -2 is not >= 1"),
        (["--leaves", "x"], "argument --leaves: 'x' is not an integer"),
        (["--cases", "resnet"], "argument --cases: invalid choice: 'resnet'"),
        (["--contenders", "sgd"], "argument --contenders: invalid choice: 'sgd'"),
        (["--json", "/nonexistent-folder/out.json"], "does not exist"),
        (["--json", "/"], "is a folder, not a file"),
    ],
)
def test_bad_arguments_exit_2_before_any_work(args, message):
    result = _bench(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "adam-jax bench on" not in result.stdout  # nothing was measured


def _plan(*argv: str) -> dict[str, bench.Case]:
    args = cli.build_parser().parse_args(["bench", *argv])
    return {case.name: case for case in bench.plan(args)}


def test_default_run_selects_the_small_cases():
    cases = _plan()
    assert list(cases) == ["one-array", "many-leaves", "train-mlp", "train-many-leaves"]
    assert cases["one-array"].shapes == ((2**22,),)
    assert cases["many-leaves"].shapes == ((64, 64),) * 100
    assert cases["train-many-leaves"].shapes == ((32, 32),) * 100
    assert [c.kind for c in cases.values()] == ["optimizer step"] * 2 + ["train step"] * 2


def test_full_run_selects_every_case_at_the_issue_sizes():
    cases = _plan("--full")
    assert list(cases) == [
        "one-array",
        "many-leaves",
        "gpt2-small",
        "train-mlp",
        "train-many-leaves",
    ]
    assert cases["one-array"].shapes == ((2**24,),)
    assert cases["many-leaves"].shapes == ((64, 64),) * 1000
    assert cases["train-many-leaves"].shapes == ((32, 32),) * 1000
    gpt2 = cases["gpt2-small"].shapes
    # GPT-2 small (tied embeddings): 148 tensors, 124,439,808 parameters as published.
    assert len(gpt2) == 148
    assert sum(math.prod(s) for s in gpt2) == 124_439_808
    # The paper's MLP 784-1000-1000-10: weights and biases.
    assert sum(math.prod(s) for s in cases["train-mlp"].shapes) == (
        784 * 1000 + 1000 + 1000 * 1000 + 1000 + 1000 * 10 + 10
    )


def test_sizes_and_cases_given_on_the_command_line_win():
    cases = _plan("--full", "--cases", "many-leaves", "one-array", "--leaves", "7", "--params", "9")
    assert list(cases) == ["many-leaves", "one-array"]
    assert cases["many-leaves"].shapes == ((64, 64),) * 7
    assert cases["one-array"].shapes == ((9,),)


def test_json_records_rows_device_versions_and_command(tmp_path):
    out = tmp_path / "bench.json"
    result = _bench(*TINY, "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no temporary file left
    assert record["device_kind"] and record["backend"] == "cpu"
    assert set(record["versions"]) == {"adam-jax", "jax", "jaxlib", "optax", "torch"}
    if HAVE_TORCH:
        assert record["torch_devices"] == ["cpu"] and record["torch_threads"] >= 1
    else:
        assert record["torch_devices"] == [] and record["torch_threads"] is None
        assert record["versions"]["torch"] is None
    assert record["versions"]["adam-jax"] == adam_jax.__version__
    assert record["command"].startswith("adam-jax bench --params 4096")
    assert record["arguments"]["leaves"] == 3 and record["arguments"]["rounds"] == 1
    assert "json" not in record["arguments"] and record["date"].startswith("20")
    assert set(record["rows"][0]) == {f.name for f in dataclasses.fields(bench.Row)}

    by_case: dict[str, dict[str, dict]] = {}
    for row in record["rows"]:
        by_case.setdefault(row["case"], {})[row["contender"]] = row
    assert list(by_case) == [
        "one-array (1 leaves, 0.0M)",
        "many-leaves (3 leaves, 0.0M)",
        "train-mlp (6 leaves, 1.8M)",
        "train-many-leaves (3 leaves, 0.0M)",
    ]
    jax_contenders = [
        "optax.adam",
        "optax.flatten(optax.adam)",
        "adam_jax.adam",
        "adam_jax.adam, flat moments",
        "adam_jax.adam, bf16 moments",
        "adam_jax.adam, 8-bit moments",
    ]
    torch_contenders = ["torch fused Adam (cpu)", "torch foreach Adam (cpu)"] if HAVE_TORCH else []
    for case, rows in by_case.items():
        if case.startswith("train-"):  # train steps: the SGD baseline and the overhead over it
            assert list(rows) == ["optax.sgd", *jax_contenders]
            assert rows["optax.sgd"]["overhead_ms"] == 0.0
            assert rows["optax.adam"]["overhead_vs_optax"] == 1.0
            for row in rows.values():
                assert row["kind"] == "train step" and row["vs_floor"] is None
                assert row["overhead_ms"] is not None and row["overhead_vs_optax"] is not None
        else:  # optimizer steps: the floor, and torch on the same leaves
            assert list(rows) == ["floor", *jax_contenders, *torch_contenders]
            assert rows["floor"]["vs_floor"] == 1.0 and rows["floor"]["state_bytes_per_param"] == 0
            for row in rows.values():
                assert row["kind"] == "optimizer step" and row["overhead_ms"] is None
            for name in torch_contenders:
                assert rows[name]["compile_s"] is None  # eager
        assert rows["optax.adam"]["vs_optax"] == 1.0
        assert rows["optax.adam"]["compile_vs_optax"] == 1.0
        assert rows["optax.adam"]["state_bytes_per_param"] == pytest.approx(8.0, abs=0.01)
        # adam_jax's state also holds its record: 10 float32 scalars, 40 bytes
        assert rows["adam_jax.adam, bf16 moments"]["state_bytes_per_param"] == pytest.approx(
            4.0, abs=0.02
        )
    # printed as Markdown tables, one per case, train steps with the overhead columns
    assert result.stdout.count("\n|" + "---|" * 7 + "\n") == 4
    assert "| train step: train-mlp (6 leaves, 1.8M) | ms/step | overhead ms |" in result.stdout


def test_contenders_selects_a_subset_besides_the_references(tmp_path):
    out = tmp_path / "bench.json"
    args = [*TINY, "--cases", "one-array", "train-many-leaves", "--contenders", "8bit", "adam_jax"]
    result = _bench(*args, "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    names = [(r["case"].split()[0], r["contender"]) for r in json.loads(out.read_text())["rows"]]
    assert names == [
        ("one-array", "floor"),
        ("one-array", "optax.adam"),
        ("one-array", "adam_jax.adam"),
        ("one-array", "adam_jax.adam, 8-bit moments"),
        ("train-many-leaves", "optax.sgd"),
        ("train-many-leaves", "optax.adam"),
        ("train-many-leaves", "adam_jax.adam"),
        ("train-many-leaves", "adam_jax.adam, 8-bit moments"),
    ]


def test_8bit_comparison_prints_its_table_and_writes_its_record(tmp_path):
    """Steps timed side by side; each compile in a fresh process (``--rounds 1``: one round)."""
    out = tmp_path / "8bit.json"
    result = _bench(
        "--8bit", "--params", "4096", "--leaves", "2", "--rounds", "1", "--inner", "1",
        "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[1] == bench.format_8bit_table([]).splitlines()[0]
    assert [line.split(" |")[0] for line in lines[3:]] == [
        "| step, 0M flat (0.0M)",
        "| step, GPT-2 block (7.1M)",
        "| compile, 2 leaves",
        "| compile, 2 leaves, every leaf in 8 bits (min_size=0)",
    ]
    record = json.loads(out.read_text())
    rows = [bench.Row8(**r) for r in record["rows_8bit"]]
    assert "\n".join(lines[1:7]) == bench.format_8bit_table(rows)
    compiled = record["compile_s_by_round"]
    assert sorted(compiled) == sorted(bench.COMPILED_8BIT)
    assert all(len(v) == 1 and 0 < v[0] < 600 for v in compiled.values())
    assert rows[2].ratio == compiled["8bit"][0] / compiled["float32"][0]
    # float32: 8 bytes a parameter plus the step count and the record (44 bytes in all)
    assert rows[0].eight_bit_bytes < 2.1 and abs(rows[0].float32_bytes - 8) < 0.02


@pytest.mark.parametrize("delay", [0.5, 1.0, 2.5])
def test_ctrl_c_during_bench_exits_130_with_one_line(delay):
    """At any moment. On this machine the delays land in torch's import and in XLA compiles, where
    the process once ended with -2 or -6 (an interrupted import) and -11 (shutdown after an
    interrupted compile) instead of 130."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "adam_jax", "bench", "--cases", "many-leaves", "--rounds", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().startswith("adam-jax bench on")  # measuring has started
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines() == ["adam-jax: interrupted (Ctrl-C)"], err[-2000:]


@pytest.mark.parametrize("how", ["returns 130", "raises SystemExit(130)", "returns 0"])
def test_after_ctrl_c_the_process_ends_without_python_shutdown(tmp_path, how):
    """Exit code 130 (returned by a command, or raised as ``adam-jax demo`` does) ends the process
    at once: Python's shutdown segfaulted after an interrupted XLA compile. The atexit handler
    shows whether the shutdown ran; other exit codes keep it."""
    body = {"returns 130": "130", "raises SystemExit(130)": "sys.exit(130)", "returns 0": "0"}
    (tmp_path / "command_then_exit.py").write_text(
        "import atexit, sys\n"
        "from adam_jax.tools import cli\n"
        "atexit.register(lambda: print('shutdown ran'))\n"
        f"cli.main = lambda: {body[how]}\n"
        "cli.run()\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "command_then_exit"], cwd=tmp_path, capture_output=True, text=True
    )
    code = 0 if how == "returns 0" else 130
    assert (done.returncode, done.stdout) == (code, "shutdown ran\n" if code == 0 else ""), done


def test_ctrl_c_during_an_import_is_kept_for_later(tmp_path, monkeypatch):
    """An import is not interrupted (a half-imported torch ended the process with SIGINT or
    abort); the Ctrl-C is recorded and raised at the next check."""
    import importlib

    (tmp_path / "ctrl_c_while_imported.py").write_text(
        "import signal, sys\n"
        "from adam_jax.tools import interrupt\n"
        "interrupt._on_ctrl_c(signal.SIGINT, sys._getframe())\n"
        "FINISHED = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    interrupt._interrupted.clear()
    try:
        module = importlib.import_module("ctrl_c_while_imported")
        assert module.FINISHED
        with pytest.raises(KeyboardInterrupt):
            interrupt.check_interrupted()
    finally:
        sys.modules.pop("ctrl_c_while_imported", None)
        interrupt._interrupted.clear()


def test_an_error_after_ctrl_c_counts_as_the_interruption(capsys):
    """A Ctrl-C landing in a Python callback of C code can come back as another error (NumPy:
    ``SystemError: ... returned a result with an exception set``); without Ctrl-C an error
    propagates."""

    def wrapped():
        interrupt._interrupted.set()  # what the signal handler does first
        raise SystemError("returned a result with an exception set") from KeyboardInterrupt()

    assert interrupt.interruptible(wrapped, "stopped") == 130
    assert capsys.readouterr().err == "stopped\n"
    interrupt.check_interrupted()  # handled: it does not stop what the process runs next

    def failing():
        raise SystemError("a real error")

    with pytest.raises(SystemError, match="a real error"):
        interrupt.interruptible(failing, "stopped")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_kill_stops_a_command_as_ctrl_c_does(name, capsys):
    """``kill`` (SIGTERM, what a scheduler or a container sends before it kills) and a closed
    terminal (SIGHUP) stop a command as Ctrl-C does: the command's own handling runs (a reproduce
    run writes its record), one line, 130; the process's handlers are restored afterwards."""
    import os
    import signal
    import time

    signum = getattr(signal, name)
    before = signal.getsignal(signum)
    cleaned = []

    def body():
        try:
            os.kill(os.getpid(), signum)  # a real signal, delivered to this process
            time.sleep(10)  # the handler raises here, long before the sleep ends
        finally:
            cleaned.append(True)
        return 0

    started = time.monotonic()
    assert interrupt.interruptible(body, "stopped") == 130
    assert time.monotonic() - started < 5 and cleaned == [True]
    assert capsys.readouterr().err == "stopped\n"
    assert signal.getsignal(signum) is before
    interrupt.check_interrupted()  # handled: it does not stop what the process runs next
    # a signal ignored on purpose (``nohup`` ignores SIGHUP) stays ignored
    signal.signal(signum, signal.SIG_IGN)
    try:
        seen = []
        code = interrupt.interruptible(
            lambda: seen.append(signal.getsignal(signum)) or os.kill(os.getpid(), signum) or 0,
            "stopped",
        )
        assert (code, seen) == (0, [signal.SIG_IGN])
    finally:
        signal.signal(signum, before)


def test_ratios_and_overheads_pair_the_rounds():
    """Per-round differences and ratios, then the median: drift between rounds cancels."""
    times = {"adam": [3.0, 10.0, 5.0], "sgd": [1.0, 2.0, 4.0]}
    assert bench._paired(times, "adam", "sgd", operator.sub) == 2.0  # median of 2, 8, 1
    assert bench._paired(times, "adam", "sgd", operator.truediv) == 3.0  # median of 3, 5, 1.25


def test_ctrl_c_inside_a_gc_callback_is_not_lost(capsys):
    """Python drops an exception raised in a garbage-collection callback (JAX installs one): a
    Ctrl-C landing there must still stop the command (it once let a bench run to the end)."""
    import gc
    import signal

    seen = []

    def callback(phase, info):
        if phase == "start" and not seen:
            seen.append(phase)
            interrupt._on_ctrl_c(signal.SIGINT, sys._getframe())  # as if the signal arrived here

    interrupt._interrupted.clear()
    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert seen and "Exception ignored" not in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        interrupt.check_interrupted()
    interrupt._interrupted.clear()
    with pytest.raises(KeyboardInterrupt):  # outside a callback it raises at once, as Python does
        interrupt._on_ctrl_c(signal.SIGINT, sys._getframe())
    interrupt._interrupted.clear()
