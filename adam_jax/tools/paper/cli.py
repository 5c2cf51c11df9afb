"""``adam-jax reproduce {fig1,fig2,fig3,fig4,all}`` (also ``python -m adam_jax.paper``)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

FIGURE_CHOICES = ("fig1", "fig2", "fig3", "fig4", "all")
MAX_SEED = 2**31 - 1


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: a count N (seeds 0..N-1) or a comma-separated list ("3," is seed 3 alone)."""
    return list(seed_sequence(text))


def seed_sequence(text: str) -> Sequence[int]:
    """:func:`parse_seeds` without making the list: a count N gives ``range(N)``, so that a huge
    count is refused for its memory before anything is allocated."""
    rule = f"{text!r}: seeds must be distinct integers in [0, {MAX_SEED}], at least one"
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise argparse.ArgumentTypeError(f"{text!r}: the number of seeds must be >= 1")
            if count > MAX_SEED + 1:
                raise argparse.ArgumentTypeError(rule)
            return range(count)
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a number of seeds (e.g. 5) or a comma-separated list (e.g. 0,3,7)"
        ) from None
    if not seeds or any(not 0 <= s <= MAX_SEED for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(rule)
    return seeds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the ``reproduce`` command."""
    from adam_jax.tools.paper import runner

    def grids(g: dict) -> str:
        return ", ".join(f"{runner.LABELS[o]} {v[0]:g}..{v[-1]:g} ({len(v)})" for o, v in g.items())

    parser.add_argument("figure", choices=FIGURE_CHOICES, help="which figure of Section 6 (or all)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="epochs of the stand-in data, not the paper's iterations (Fig. 1 15/10, Fig. 2 8, "
        "Fig. 3 6, Fig. 4 3 and 15), 3 verdict seeds and 2 selection seeds, a narrower CNN "
        "(c16-c16-c32-250) on the 8x8 digits (its third convolution degenerate), no runs "
        "without dropout, a bag-of-words corpus of 4,000 documents over 1,000 words, and "
        "learning-rate grids of 3-4 half-decade points: "
        f"{grids(runner.QUICK_GRIDS)}, extended past an edge as in the full run; verdicts are "
        "labelled (quick)",
    )
    size.add_argument(
        "--tiny",
        action="store_true",
        help="smoke-test size used by the test suite (256 examples, 1-2 epochs, 2 seeds, "
        "1-point grids); numbers are not meaningful",
    )
    parser.add_argument(
        "--seeds",
        type=seed_sequence,
        default=None,
        help="the verdict seeds: a number N (seeds 0..N-1) or a list like 0,3,7 (default: 5 for "
        "the full run, 3 with --quick, 2 with --tiny); verdicts need at least 2. Learning rates "
        "are chosen on other seeds, 1000, 1001, ... (3 full, 2 quick, 1 tiny)",
    )
    parser.add_argument(
        "--out", default="adam_jax_results", help="output directory (default ./adam_jax_results)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the finished runs already in --out (same figure, size and seeds); "
        "the result equals an uninterrupted run",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh even though --out holds results of these figures (replaced as the "
        "new runs finish); results of other figures in --out are always kept",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="directory with the real data: MNIST IDX files, CIFAR-10 binary batches, "
        "aclImdb/train/labeledBow.feat (default: embedded sklearn digits and a generated corpus)",
    )
    parser.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        help="figures run at the same time, each in a process of its own (default: one per "
        "figure, at most one per CPU core); results equal a one-process run's",
    )
    parser.add_argument(
        "--few-epochs-only",
        action="store_true",
        help="train Fig. 4's runs for their first 10 epochs only (the full run: 4,690 "
        "iterations; 3 with --quick) and decide the claims after 10 epochs; the claims after "
        "100 epochs are left out. A later --resume without it trains the runs to 100 epochs",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    parser.add_argument("--progress-file", type=Path, default=None, help=argparse.SUPPRESS)
    parser.epilog = (
        "The full run trains the paper's iterations: an epoch is 469 iterations of 128 for MNIST "
        "(and its stand-in), 196 for IMDB, 391 for CIFAR-10, whatever the data's size; the "
        "CIFAR-10 stand-in is the digits up-sampled to 32x32 and coloured; Fig. 1 right and "
        "Fig. 3 are also run without dropout; 5 verdict seeds, 3 selection seeds. "
        "Full-run learning-rate grids (half-decade steps; a decade higher under alpha/sqrt(t) in "
        "Fig. 1, AdaGrad at constant alpha excepted; extended up to 2 steps past an edge when "
        f"the selection lands on it): {grids(runner.FULL_GRIDS)}. Fig. 4 always uses the paper's "
        "grid."
    )


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def check_out(out: Path) -> str | None:
    """Create ``out`` if missing and check that a file can be written in it; the problem, or None."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a directory. Choose another with --out."
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        return f"--out {out} cannot be created or written ({reason}). Choose another with --out."
    return None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    """The commit of the adam_jax checkout this runs from (None when installed, not a checkout)."""
    root = Path(__file__).resolve().parents[3]  # adam_jax/tools/paper/cli.py -> the checkout
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "adam_jax"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+uncommitted changes to adam_jax" if dirty else "")) or None


def provenance(args: argparse.Namespace, budget_name: str, figures, seeds) -> dict:
    """The fields of ``run.json`` that do not change while the run goes on."""
    import jax
    import jaxlib
    import optax

    import adam_jax

    command = ["adam-jax", "reproduce", args.figure]
    command += {"quick": ["--quick"], "tiny": ["--tiny"], "full": []}[budget_name]
    command += ["--seeds", ",".join(map(str, seeds)), "--out", str(args.out)]
    command += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    command += ["--few-epochs-only"] if args.few_epochs_only else []
    device = jax.devices()[0]
    return {
        "command": " ".join(command),
        "mode": budget_name,
        "figures": list(figures),
        "seeds": list(seeds),
        "data_dir": args.data_dir,
        **({"few_epochs_only": True} if args.few_epochs_only else {}),
        "adam_jax": adam_jax.__version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "optax": optax.__version__,
        "device": f"{device.platform}: {device.device_kind}",
        "cpu_count": os.cpu_count(),
    }


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "true or false"}
    return "null" if value is None else names.get(type(value), "a number")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _run_json_problem(info) -> str | None:
    """What keeps ``run.json``'s content ``info`` from being continued by --resume, or None."""
    if not isinstance(info, dict):
        return f"it holds {_json_type(info)}, not an object"
    expected = {
        "mode": ("a string", lambda v: isinstance(v, str)),
        "figures": ("an array of figure names", lambda v: isinstance(v, list)
                    and all(isinstance(f, str) for f in v)),
        "seeds": ("an array of integers", lambda v: isinstance(v, list)
                  and all(isinstance(x, int) and not isinstance(x, bool) for x in v)),
        "data_dir": ("a path or null", lambda v: v is None or isinstance(v, str)),
        "command": ("a string", lambda v: isinstance(v, str)),
        "kept_figures": ("an object of commands", lambda v: isinstance(v, dict)
                         and all(c is None or isinstance(c, str) for c in v.values())),
        "sittings": ("an array of objects", lambda v: isinstance(v, list)
                     and all(isinstance(s, dict) for s in v)),
    }  # fmt: skip
    for field, (what, ok) in expected.items():
        if field in info and not ok(info[field]):
            return f"its {field} is {_json_type(info[field])}, not {what}"
    for i, sitting in enumerate(info.get("sittings", [])):
        if not isinstance(sitting.get("start", ""), str):
            return f"its sittings[{i}].start is {_json_type(sitting['start'])}, not a date"
        if "wall_seconds" in sitting and not _is_number(wall := sitting["wall_seconds"]):
            return f"its sittings[{i}].wall_seconds is {_json_type(wall)}, not a number"
        for field in ("figure_seconds", "figure_cpu_seconds"):
            value = sitting.get(field, {})
            if not isinstance(value, dict) or not all(_is_number(x) for x in value.values()):
                return f"its sittings[{i}].{field} is not an object of numbers of seconds"
    return None


def read_run_json(path: Path) -> tuple[dict | None, str | None]:
    """The ``run.json`` of an earlier run in --out, or None and what is wrong with it (naming
    the file)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return None, f"cannot read {path} ({err})"
    problem = _run_json_problem(info)
    return (None, f"{path} is not a run.json of adam-jax reproduce: {problem}") if problem else (
        info, None
    )  # fmt: skip


def reproduce(args: argparse.Namespace) -> int:
    """Run the experiments, write results.csv, run.json, the figures and summary.md. Returns the
    exit code: 0, 2 for bad arguments or data (before any training), 130 on Ctrl-C."""
    try:
        return _reproduce(args)
    except KeyboardInterrupt:
        out = Path(args.out) / "results.csv"
        print(
            f"interrupted: the finished runs are in {out}; continue with --resume",
            file=sys.stderr,
        )
        return 130


def _reproduce(args: argparse.Namespace) -> int:
    from adam_jax.tools.common import too_big
    from adam_jax.tools.paper import claims as claims_lib
    from adam_jax.tools.paper import figures, parallel, runner
    from adam_jax.tools.paper.data import DataError

    budget = runner.TINY if args.tiny else runner.QUICK if args.quick else runner.FULL
    wanted = list(runner.FIGURES) if args.figure == "all" else [args.figure]
    if args.few_epochs_only and "fig4" not in wanted:
        return _error(f"--few-epochs-only shortens Fig. 4's runs; {args.figure} has none")
    few, many = budget.epochs["fig4_few"], budget.epochs["fig4_many"]
    if args.few_epochs_only:  # the runs stop after ``few`` epochs; no claim after ``many``
        budget = dataclasses.replace(budget, epochs={**budget.epochs, "fig4_many": few})
        many = None
    seeds = args.seeds or range(budget.seeds)
    if args.resume and args.overwrite:
        return _error("--resume keeps the results in --out and --overwrite replaces them: pass one")
    problem = too_big(  # the result rows are held in memory: checked before the list of seeds
        (len(seeds) + budget.selection_seeds)
        * runner.rows_per_seed(wanted, budget)
        * runner.ROW_BYTES,
        f"the result rows of {len(seeds):,} seeds ({args.figure}, {budget.name} run)",
        "pass fewer --seeds",
    )
    if problem:
        return _error(problem)
    seeds = list(seeds)
    clash = sorted(set(seeds) & set(runner.selection_seeds(budget)))
    if clash:
        return _error(
            f"--seeds {', '.join(map(str, clash))}: the learning rates are chosen on seeds "
            f"{', '.join(map(str, runner.selection_seeds(budget)))} of this run, and the verdict "
            f"seeds must differ from them: choose seeds below {runner.SELECTION_SEED_BASE}"
        )
    out = Path(args.out)
    problem = check_out(out)
    if problem:
        return _error(problem)
    info = provenance(args, budget.name, wanted, seeds)
    run_json = out / "run.json"
    sittings = []
    before, problem = read_run_json(run_json) if run_json.is_file() else (None, None)
    if args.resume and problem:
        return _error(f"--resume: {problem}. Pass --overwrite to start afresh, or another --out.")
    if args.resume and before is not None:
        same = ("mode", "figures", "seeds", "data_dir")
        diff = [k for k in same if before.get(k) != info[k]]
        if diff:
            return _error(
                f"--resume: {out} holds a run with different "
                + ", ".join(f"{k} ({before.get(k)!r}, not {info[k]!r})" for k in diff)
                + ". Use the same arguments, or another --out."
            )
        sittings = before.get("sittings", [])
    csv_path = out / "results.csv"
    try:
        existing = runner.read_results(csv_path) if csv_path.is_file() else []
    except runner.ResultsFileError as err:
        return _error(
            f"{'--resume: ' * args.resume}{err}; it is not a results file of adam-jax reproduce. "
            "Move it away, or choose another --out."
        )
    held = {f: sum(r["figure"] == f for r in existing) for f in wanted}
    if any(held.values()) and not (args.resume or args.overwrite):
        return _error(
            f"{csv_path} already holds results of "
            + ", ".join(f"{f} ({n} rows)" for f, n in held.items() if n)
            + ": pass --resume to continue them, --overwrite to start afresh, or another --out"
        )
    kept = runner.in_figure_order([r for r in existing if r["figure"] not in wanted])
    if kept:  # another figure's rows stay in results.csv; run.json says which run wrote them
        earlier = before or {}
        commands = {f: earlier.get("command") for f in earlier.get("figures", [])}
        commands |= earlier.get("kept_figures", {})
        info["kept_figures"] = {r["figure"]: commands.get(r["figure"]) for r in kept}
    jobs = min(args.jobs or parallel.default_jobs(wanted), len(wanted))
    try:  # the workers of a parallel run load their own data; this checks it first
        datasets = (
            runner.load_data(wanted, budget, args.data_dir) if jobs == 1 or args.data_dir else {}
        )
    except (DataError, FileNotFoundError) as err:
        return _error(str(err))
    from tqdm import tqdm  # the plain bar: tqdm.auto warns in notebooks without ipywidgets

    sitting = {
        "start": _now(),
        "end": None,
        "resume": bool(args.resume),
        "git_commit": info["git_commit"],
        "status": "running",
        "figure_seconds": {},
        "figure_cpu_seconds": {},
    }
    sittings.append(sitting)
    started = time.monotonic()

    def save_json(status: str) -> None:
        sitting.update(end=_now(), status=status, wall_seconds=time.monotonic() - started)
        totals: dict[str, dict[str, float]] = {"figure_seconds": {}, "figure_cpu_seconds": {}}
        for field, total in totals.items():
            if not all(field in s for s in sittings):
                continue  # a sitting of an older version did not measure it: no partial sums
            for fig in runner.FIGURES:  # in figure order, whichever sitting ran them first
                if any(fig in s[field] for s in sittings):
                    total[fig] = round(sum(s[field].get(fig, 0.0) for s in sittings), 1)
        fields = ("figure_seconds", "figure_cpu_seconds")
        rounded = [
            {**s, **{f: {k: round(v, 1) for k, v in s[f].items()} for f in fields if f in s}}
            | ({"wall_seconds": round(s["wall_seconds"], 1)} if "wall_seconds" in s else {})
            for s in sittings
        ]
        wall = (  # None when a sitting of an older version did not measure it
            round(sum(s["wall_seconds"] for s in sittings), 1)
            if all("wall_seconds" in s for s in sittings) else None
        )  # fmt: skip
        info.update(status=status, **totals, wall_seconds=wall, sittings=rounded)
        partial = run_json.with_name(run_json.name + ".partial")  # a kill never leaves half a file
        partial.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(partial, run_json)

    if jobs > 1:
        info["jobs"] = jobs
    results = None if jobs > 1 else runner.Results(csv_path, resume=args.resume, figures=wanted)
    if results is not None:  # the sitting's times so far, with every finished group: a sitting
        results.on_add = lambda: save_json("running")  # killed outright still counts until then
    save_json("running")
    seconds, cpu = sitting["figure_seconds"], sitting["figure_cpu_seconds"]
    total = runner.work_units(wanted, budget, len(seeds))
    with tqdm(
        total=total, unit="run-epoch", disable=args.no_progress, desc=f"reproduce {args.figure}"
    ) as bar:
        try:
            if results is None:
                parallel.run(args, budget.name, wanted, seeds, out, jobs, bar, sitting)
            else:
                progress = runner.Progress(bar, args.progress_file)
                rows = runner.run(wanted, budget, seeds, datasets, results, progress, seconds, cpu)
                runner.write_csv(runner.in_figure_order(results.others + rows), csv_path)
        except KeyboardInterrupt:
            bar.close()
            save_json("interrupted")
            raise
        except parallel.WorkerFailed as err:
            bar.close()
            save_json("failed")
            print(f"error: {err}", file=sys.stderr)
            return 1
    # figures and claims come from the file itself (the rows of this run's figures)
    rows = [r for r in runner.read_csv(csv_path) if r["figure"] in wanted]
    save_json("finished")

    note = (
        f"{budget.name} run, verdict seeds {', '.join(map(str, seeds))}, selection seeds "
        f"{', '.join(map(str, runner.selection_seeds(budget)))}"
        + (", epochs of the paper's iterations" if budget.paper_steps else "")
        + (f", Fig. 4's first {few} epochs only" if args.few_epochs_only else "")
    )
    written = ["results.csv", "run.json"]
    paper = budget.paper_steps
    draw = {
        "fig1": lambda: figures.figure1(rows, out, note, paper),
        "fig2": lambda: figures.figure2(rows, out, note, paper),
        "fig3": lambda: figures.figure3(rows, out, note, budget.epochs["fig3_early"], paper),
        "fig4": lambda: figures.figure4(rows, out, note, few, many, paper),
    }
    for fig in wanted:
        written.append(draw[fig]().name)
    fig4_steps = runner.PAPER_STEPS["mnist"] if budget.paper_steps else None  # else: data's
    claims = claims_lib.check(rows, few, many, fig4_steps)
    summary = claims_lib.summary_markdown(
        claims, _header(args, budget, seeds, rows, info), _selection_notes(rows), budget.name
    )
    (out / "summary.md").write_text(summary)
    written.append("summary.md")
    print(f"wrote {', '.join(written)} to {out}; training time per figure (s): "
          + ", ".join(f"{k} {v:.0f}" for k, v in info["figure_seconds"].items()))  # fmt: skip
    if args.resume and results is not None:
        print(
            f"  (resumed: {results.finished_runs} runs in results.csv before or during this sitting)"
        )
    for c in claims:
        print(f"  [{c.verdict}, {c.k} of {c.n} seeds] {c.figure}: {c.measured}")
    return 0


def _header(args, budget, seeds, rows, info) -> str:
    from adam_jax.tools.paper import runner

    sources = sorted({f"{r['panel']}: {r['dataset']}" for r in rows})
    sec = info["figure_seconds"]
    return "\n".join(
        [
            f"# Section 6 reproduction: {args.figure} ({budget.name} run, seeds "
            f"{', '.join(map(str, seeds))})",
            "",
            f"Learning rates and every other grid choice were made on the selection seeds "
            f"{', '.join(map(str, runner.selection_seeds(budget)))}; the verdicts and curves are "
            "of the verdict seeds above."
            + (
                f" **{budget.name.capitalize()} run**: its verdicts are labelled "
                f"`({budget.name})` and do not stand for the full run's."
                if budget.name != "full"
                else ""
            ),
            "",
            "Training time per figure (s, summed over sittings; wall clock, then CPU time of "
            "the process that ran it): "
            + ", ".join(
                f"{k} {v:.0f}"
                + (f" (CPU {cpu[k]:.0f})" if k in (cpu := info["figure_cpu_seconds"]) else "")
                for k, v in sec.items()
            )
            + (f"; the whole run {w:.0f} s of wall clock" if (w := info["wall_seconds"]) else "")
            + (f", figures in {info['jobs']} parallel processes" if info.get("jobs") else "")
            + f". Versions, commit and device: `run.json` (adam_jax {info['adam_jax']}, "
            f"jax {info['jax']}, {info['device']}).",
            *(
                [
                    "",
                    f"Fig. 4's runs were trained for their first {budget.epochs['fig4_few']} "
                    "epochs only (`--few-epochs-only`): the claims after "
                    f"{runner.BUDGETS[budget.name].epochs['fig4_many']} epochs are not decided "
                    "by this run.",
                ]
                if info.get("few_epochs_only")
                else []
            ),
            "",
            "Data used:",
            *[f"- {s}" for s in sources],
            "",
            "Each curve is the learning rate with the lowest area under the log-cost curve "
            "averaged over the selection seeds (results.csv, columns `stage` and `selected`). "
            "Verdicts follow the rules in `adam_jax/tools/paper/claims.py` (history: "
            "`results/RULES.md`): `yes` or `no` only when every verdict seed agrees and the 95% "
            "t-interval of the mean lies past the margin; `inconclusive` otherwise.",
        ]
    )


def _selection_notes(rows: list[dict]) -> str:
    """The selected learning rate per (panel, optimizer), flagged when still on a grid edge."""
    from adam_jax.tools.paper import runner

    tried: dict[tuple[str, str], set[float]] = {}
    chosen: dict[tuple[str, str], float] = {}
    for r in rows:
        if r["panel"] in ("fig4", "fig3_iter") or r["stage"] != "selection":
            continue
        key = (r["panel"], r["optimizer"])
        tried.setdefault(key, set()).add(float(r["learning_rate"]))
        if r["selected"] == "1":
            chosen[key] = float(r["learning_rate"])
    lines, edges = [], []
    for key in sorted(chosen):
        lrs = sorted(tried[key])
        edge = (
            " **top edge of the grid**" if chosen[key] == lrs[-1] and len(lrs) > 1
            else " **bottom edge of the grid**" if chosen[key] == lrs[0] and len(lrs) > 1
            else " **only grid point**" if len(lrs) == 1 else ""
        )  # fmt: skip
        if edge:
            edges.append(f"{key[0]} {runner.LABELS[key[1]]}")
        lines.append(
            f"- {key[0]} {runner.LABELS[key[1]]}: α = {chosen[key]:g} of "
            f"{', '.join(f'{x:g}' for x in lrs)}{edge}"
        )
    flag = (
        f"Still on a grid edge after the extensions: {', '.join(edges)}."
        if edges else "No selected learning rate is on a grid edge."
    )  # fmt: skip
    return "\n".join(["## Selected learning rates", "", flag, "", *lines])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m adam_jax.paper``; Ctrl-C is handled as by ``adam-jax``."""
    from adam_jax.tools.common import Parser
    from adam_jax.tools.interrupt import interruptible

    parser = Parser(prog="python -m adam_jax.paper", description=__doc__)
    add_arguments(parser)
    return interruptible(lambda: reproduce(parser.parse_args(argv)), "interrupted")
