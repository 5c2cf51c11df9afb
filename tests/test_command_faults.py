"""Faults of the command line, one test each: ``adam-jax reproduce`` never deletes another figure's
results and starts afresh over its own only with ``--overwrite``; sizes and seed counts that cannot
fit in memory are refused before anything is allocated; a malformed ``run.json`` or
``results.csv`` is refused under ``--resume``; ``bench --8bit`` refuses the options it would
ignore and records what it ran. Bad input gives one line on stderr and exit code 2."""

import json

import numpy as np
import pytest

from adam_jax.tools import bench, cli, common
from adam_jax.tools.paper import parallel, runner, train


def fake_train_runs(model, x, y, make_tx, hparams, epochs, seed, on_epoch=None, **kw):
    """A stand-in for train.train_runs_with_steps: instant, finite, deterministic costs."""
    lrs = np.asarray(hparams["lr"])
    final = (np.log(lrs) - np.log(0.5)) ** 2 + 1.0 + 0.01 * seed
    losses = np.stack([np.full_like(final, 10.0)] + [final] * epochs, axis=1)
    return losses, np.zeros((len(lrs), kw.get("step_epochs", 0) * (len(y) // 128)))


def reproduce(*args: str) -> int:
    return cli.main(["reproduce", *args, "--tiny", "--no-progress"])


def one_line_error(capsys) -> str:
    """The whole of stderr, asserted to be one ``error`` line and no traceback."""
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "error" in err and "Traceback" not in err, err
    return err


def rows_of(path, figure):
    return [r for r in runner.read_csv(path) if r["figure"] == figure]


# --- 1. a run never deletes another figure's results ------------------------------------------


def test_a_run_keeps_other_figures_results_and_overwrites_its_own_only_when_told(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(train, "train_runs_with_steps", fake_train_runs)
    out, csv_path = tmp_path / "o", tmp_path / "o" / "results.csv"
    assert reproduce("fig2", "--out", str(out)) == 0
    fig2 = rows_of(csv_path, "fig2")
    seeds = 2 + runner.TINY.selection_seeds  # the verdict seeds and the selection seeds
    assert len(fig2) == runner.rows_per_seed(["fig2"], runner.TINY) * seeds
    fig2_command = json.loads((out / "run.json").read_text())["command"]

    # before: fig1 wiped results.csv (0 of fig2's 36 rows left); now fig2's rows stay
    assert reproduce("fig1", "--out", str(out)) == 0
    assert rows_of(csv_path, "fig2") == fig2 and rows_of(csv_path, "fig1")
    assert next(r["figure"] for r in runner.read_csv(csv_path)) == "fig1"  # in figure order
    info = json.loads((out / "run.json").read_text())
    assert info["figures"] == ["fig1"] and info["kept_figures"] == {"fig2": fig2_command}
    summary = (out / "summary.md").read_text()
    assert "Fig. 1" in summary and "Fig. 2" not in summary  # this run's figures only

    # the same figure again: refused, nothing touched, until --resume or --overwrite
    before = csv_path.read_bytes()
    assert reproduce("fig1", "--out", str(out)) == 2
    err = one_line_error(capsys)
    assert f"{csv_path} already holds results of fig1 (" in err
    assert "--resume" in err and "--overwrite" in err and "another --out" in err
    assert csv_path.read_bytes() == before
    assert reproduce("fig1", "--out", str(out), "--resume", "--overwrite") == 2
    assert "pass one" in one_line_error(capsys)
    assert reproduce("fig1", "--out", str(out), "--overwrite") == 0
    assert rows_of(csv_path, "fig2") == fig2
    assert json.loads((out / "run.json").read_text())["kept_figures"] == {"fig2": fig2_command}
    assert reproduce("fig1", "--out", str(out), "--resume") == 0
    assert rows_of(csv_path, "fig2") == fig2


def test_merging_parallel_figures_keeps_other_figures_results(tmp_path):
    kept = {f: "" for f in runner.FIELDS} | {"figure": "fig2", "panel": "fig2", "seed": "0",
                                              "epoch": "0", "loss": "1.0"}  # fmt: skip
    new = kept | {"figure": "fig1", "panel": "fig1_mnist"}
    old = kept | {"figure": "fig4", "panel": "fig4"}  # replaced by its part
    runner.write_csv([kept, old], tmp_path / "results.csv")
    for fig, row in (("fig1", new), ("fig4", old | {"loss": "2.0"})):
        parallel.part_dir(tmp_path, fig).mkdir(parents=True)
        runner.write_csv([row], parallel.part_dir(tmp_path, fig) / "results.csv")
    parallel.merge(tmp_path, ["fig1", "fig4"])
    assert runner.read_csv(tmp_path / "results.csv") == [new, kept, old | {"loss": "2.0"}]


# --- 2. sizes and seed counts checked against memory, before allocation ------------------------


def test_bench_refuses_a_size_that_cannot_fit_before_allocating(capsys):
    # before: MemoryError (a 745 GiB NumPy draw) after the header line
    assert cli.main(["bench", "--params", "100000000000"]) == 2
    err = one_line_error(capsys)
    assert "the one-array case (--params 100000000000" in err and "GiB" in err
    assert "choose a smaller --params" in err
    assert capsys.readouterr().out == ""  # nothing measured, no header
    assert cli.main(["bench", "--leaves", "100000000000", "--cases", "many-leaves"]) == 2
    assert "many-leaves case" in one_line_error(capsys)
    assert cli.main(["bench", "--8bit", "--params", "100000000000"]) == 2
    assert "--8bit at --params 100000000000" in one_line_error(capsys)


def test_bench_memory_estimate_counts_every_contender(monkeypatch, capsys):
    n = 2**20
    # params, grads, the floor's four arrays, optax.adam's and adam_jax's copies and moments
    expected = n * 4 * (6 + 3 + 3) + 8 * n
    assert bench.case_bytes("one-array", n, 1, "float32", ["adam_jax"]) == expected
    assert bench.case_bytes("one-array", n, 1, "bfloat16", ["adam_jax"]) == expected // 2 + 4 * n
    monkeypatch.setattr(common, "memory_limit", lambda device=None: (expected - 1, "the test's"))
    args = ["bench", "--params", str(n), "--cases", "one-array", "--contenders", "adam_jax"]
    assert cli.main(args) == 2
    assert f"needs about {common.gib(expected)}, more than the {common.gib(expected - 1)}" in (
        one_line_error(capsys)
    )


def test_reproduce_refuses_a_seed_count_that_cannot_fit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "train_runs_with_steps", None)  # any training would fail loudly
    out = tmp_path / "o"
    # before: MemoryError; now refused without making the list of seeds
    assert reproduce("all", "--seeds", "2000000000", "--out", str(out)) == 2
    err = one_line_error(capsys)
    assert "the result rows of 2,000,000,000 seeds (all, tiny run) needs about" in err
    assert "pass fewer --seeds" in err and not out.exists()
    per_seed = runner.rows_per_seed(["fig2"], runner.TINY) * runner.ROW_BYTES
    monkeypatch.setattr(common, "memory_limit", lambda device=None: (100 * per_seed, "the test's"))
    assert reproduce("fig2", "--seeds", "101", "--out", str(out)) == 2  # + the selection seeds
    needed = (101 + runner.TINY.selection_seeds) * per_seed
    assert f"needs about {common.gib(needed)}" in one_line_error(capsys)
    with pytest.raises(SystemExit) as stop:  # more seeds than there are
        reproduce("fig2", "--seeds", str(2**31 + 1))
    assert stop.value.code == 2 and "seeds must be distinct integers" in one_line_error(capsys)


def test_rows_per_seed_counts_the_rows_a_seed_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "train_runs_with_steps", fake_train_runs)
    assert reproduce("fig2", "--seeds", "1", "--out", str(tmp_path)) == 0
    written = len(runner.read_csv(tmp_path / "results.csv"))
    # one verdict seed and the tiny run's selection seeds, each at one rate per optimizer
    seeds = 1 + runner.TINY.selection_seeds
    assert runner.rows_per_seed(["fig2"], runner.TINY) * seeds == written


# --- 3. --resume with a malformed run.json or results.csv -----------------------------------------


GOOD_RUN = {"mode": "tiny", "figures": ["fig2"], "seeds": [0, 1], "data_dir": None,
            "sittings": []}  # fmt: skip


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ([1, 2], "it holds an array, not an object"),
        ("a string", "it holds a string, not an object"),
        (GOOD_RUN | {"seeds": "0,1"}, "its seeds is a string, not an array of integers"),
        (GOOD_RUN | {"figures": "fig2"}, "its figures is a string, not an array of figure names"),
        (GOOD_RUN | {"sittings": "x"}, "its sittings is a string, not an array of objects"),
        (GOOD_RUN | {"sittings": [1]}, "its sittings is an array, not an array of objects"),
        (GOOD_RUN | {"sittings": [{"figure_seconds": [3]}]},
         "its sittings[0].figure_seconds is not an object of numbers of seconds"),
        (GOOD_RUN | {"sittings": [{"wall_seconds": "3"}]},
         "its sittings[0].wall_seconds is a string, not a number"),
    ],
)  # fmt: skip
def test_resume_refuses_a_malformed_run_json(tmp_path, monkeypatch, capsys, content, problem):
    # before: AttributeError or TypeError
    monkeypatch.setattr(train, "train_runs_with_steps", None)
    (tmp_path / "run.json").write_text(json.dumps(content))
    assert reproduce("fig2", "--out", str(tmp_path), "--resume") == 2
    err = one_line_error(capsys)
    assert f"{tmp_path / 'run.json'} is not a run.json of adam-jax reproduce: {problem}" in err
    (tmp_path / "run.json").write_text("{not json")
    assert reproduce("fig2", "--out", str(tmp_path), "--resume") == 2
    assert f"cannot read {tmp_path / 'run.json'}" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("a,b\n1,2\n", "lacks the columns figure, panel, dataset"),
        ("", "lacks the columns figure"),
        (",".join(runner.FIELDS) + "\nfig2,fig2\n", f"line 2: not {len(runner.FIELDS)} fields"),
        (
            ",".join(runner.FIELDS) + "\n" + "fig2," * (len(runner.FIELDS) - 1) + "x\n",
            "are not all numbers",
        ),
    ],
)
def test_resume_refuses_a_results_csv_without_its_columns(
    tmp_path, monkeypatch, capsys, content, problem
):
    # before: KeyError 'panel'
    monkeypatch.setattr(train, "train_runs_with_steps", None)
    (tmp_path / "run.json").write_text(json.dumps(GOOD_RUN))
    (tmp_path / "results.csv").write_text(content)
    for flags in (["--resume"], [], ["--overwrite"]):  # an unreadable file is never replaced
        assert reproduce("fig2", "--out", str(tmp_path), *flags) == 2
        err = one_line_error(capsys)
        assert str(tmp_path / "results.csv") in err and problem in err
        assert (tmp_path / "results.csv").read_text() == content


# --- 4. bench --8bit and the options it does not take -------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--dtype", "float16"], "--dtype float16"),
        (["--cases", "one-array", "gpt2-small"], "--cases one-array gpt2-small"),
        (["--contenders", "adam_jax"], "--contenders adam_jax"),
        (["--full"], "--full"),
    ],
)
def test_bench_8bit_refuses_the_options_it_would_ignore(options, named, capsys):
    # before: run anyway, on float32 and its own cases, recording dtype=float16
    assert cli.main(["bench", "--8bit", *options]) == 2
    err = one_line_error(capsys)
    assert f"it does not take {named}." in err and capsys.readouterr().out == ""


def test_bench_records_what_it_ran(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(bench, "bench_8bit", lambda *a: ran.append(a) or ([], {}))
    out = tmp_path / "8bit.json"
    args = ["--8bit", "--dtype", "float32", "--params", "4096", "--rounds", "1", "--json", str(out)]
    assert cli.main(["bench", *args]) == 0
    assert ran == [(4096, 1, 5, 200)]
    assert json.loads(out.read_text())["arguments"] == {
        "eight_bit": True, "params": 4096, "leaves": 200, "dtype": "float32", "rounds": 1,
        "inner": 5,
    }  # fmt: skip
    monkeypatch.setattr(bench, "bench_case", lambda case, *a: ran.append((case.name, *a)) or [])
    monkeypatch.setattr(bench, "_torch", lambda: None)  # importing torch here warns
    monkeypatch.setattr(bench, "_torch_devices", list)
    assert cli.main(["bench", "--cases", "one-array", "--json", str(out)]) == 0
    assert ran[1:] == [("one-array", "float32", bench.CONTENDERS, 11, 3)]
    assert json.loads(out.read_text())["arguments"] == {
        "eight_bit": False, "full": False, "cases": ["one-array"], "contenders": bench.CONTENDERS,
        "params": bench.SIZES["default"]["params"], "leaves": bench.SIZES["default"]["leaves"],
        "dtype": "float32", "rounds": 11, "inner": 3,
    }  # fmt: skip


def test_argument_errors_are_one_line(capsys):
    for argv in (["reproduce", "fig2", "--seeds", "x"], ["bench", "--params", "0"], []):
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        assert stop.value.code == 2
        one_line_error(capsys)
