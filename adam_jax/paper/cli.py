"""``adam-jax reproduce {fig1,fig2,fig3,fig4,all}`` (also ``python -m adam_jax.paper``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from adam_jax.paper import claims as claims_lib
from adam_jax.paper import figures, runner
from adam_jax.paper.data import DataError

FIGURE_CHOICES = (*runner.FIGURES, "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the ``reproduce`` command."""
    parser.add_argument("figure", choices=FIGURE_CHOICES, help="which figure of Section 6 (or all)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="fewer epochs, 2-point learning-rate grids, a narrower CNN: all in under 10 minutes on 2 CPU cores",
    )
    size.add_argument(
        "--tiny",
        action="store_true",
        help="smoke-test size used by the test suite (256 examples, 1-2 epochs); numbers are not meaningful",
    )
    parser.add_argument(
        "--out", default="adam_jax_results", help="output directory (default ./adam_jax_results)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed (default 0); same seed, same numbers"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="directory with the real data: MNIST IDX files, CIFAR-10 binary batches, "
        "aclImdb/train/labeledBow.feat (default: embedded sklearn digits and a generated corpus)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def reproduce(args: argparse.Namespace) -> int:
    """Run the experiments, write results.csv, the figures and summary.md. Returns the exit code."""
    budget = runner.TINY if args.tiny else runner.QUICK if args.quick else runner.FULL
    wanted = list(runner.FIGURES) if args.figure == "all" else [args.figure]
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(
            f"error: cannot create the output directory {out}: {err}. Choose another with --out.",
            file=sys.stderr,
        )
        return 1
    from tqdm.auto import tqdm

    start = time.perf_counter()
    total = runner.work_units(wanted, budget)
    with tqdm(
        total=total, unit="run-epoch", disable=args.no_progress, desc=f"reproduce {args.figure}"
    ) as bar:
        try:
            rows = runner.run(wanted, budget, args.seed, args.data_dir, bar.update)
        except (DataError, FileNotFoundError) as err:
            bar.close()
            print(f"error: {err}", file=sys.stderr)
            return 2
    elapsed = time.perf_counter() - start
    runner.write_csv(rows, out / "results.csv")
    rows = runner.read_csv(out / "results.csv")  # figures and claims come from the file itself

    e, written = budget.epochs, ["results.csv"]
    if "fig1" in wanted:
        written.append(figures.figure1(rows, out).name)
    if "fig2" in wanted:
        written.append(figures.figure2(rows, out).name)
    if "fig3" in wanted:
        written.append(figures.figure3(rows, out, e["fig3_early"]).name)
    if "fig4" in wanted:
        written.append(figures.figure4(rows, out, e["fig4_few"], e["fig4_many"]).name)
    claims = claims_lib.check(rows, e["fig3_early"], e["fig4_few"], e["fig4_many"])
    sources = sorted({f"{r['panel']}: {r['dataset']}" for r in rows})
    header = "\n".join(
        [
            f"# Section 6 reproduction: {args.figure} ({budget.name} mode, seed {args.seed})",
            "",
            f"Trained in {elapsed:.0f} s. Data used:",
            *[f"- {s}" for s in sources],
            "",
            "Each curve is the learning rate with the lowest final training cost from the grid "
            "(see results.csv, column `selected`).",
        ]
    )
    picked = sorted(
        {(r["panel"], r["optimizer"], r["learning_rate"]) for r in rows if r["selected"] == "1"}
    )
    selected = "Selected learning rates: " + "; ".join(
        f"{p} {runner.LABELS[o]} α={lr}" for p, o, lr in picked
    )
    (out / "summary.md").write_text(claims_lib.summary_markdown(claims, header, selected))
    written.append("summary.md")
    print(f"wrote {', '.join(written)} to {out} in {elapsed:.0f} s of training")
    for c in claims:
        print(f"  [{'reproduced' if c.reproduced else 'NOT reproduced'}] {c.figure}: {c.measured}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m adam_jax.paper``."""
    parser = argparse.ArgumentParser(prog="python -m adam_jax.paper", description=__doc__)
    add_arguments(parser)
    return reproduce(parser.parse_args(argv))
