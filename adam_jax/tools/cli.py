"""The ``adam-jax`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from adam_jax import _extras
from adam_jax.tools.common import Parser
from adam_jax.tools.interrupt import interruptible, leave


def _demo(args: argparse.Namespace) -> int:
    from adam_jax.tools import demo

    demo.run(steps=args.steps, seed=args.seed)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from adam_jax.tools.paper import cli as paper_cli

    return paper_cli.reproduce(args)


def _bench(args: argparse.Namespace) -> int:
    if args.partition:
        from adam_jax.tools import bench_partition

        return bench_partition.main(bench_partition.argv_of(args))
    from adam_jax.tools import bench

    return bench.main(args)


def _version() -> str:
    import adam_jax

    return adam_jax.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="adam-jax", description="Adam (Kingma & Ba, 2015) for JAX, exactly as the paper."
    )
    parser.add_argument(
        "--version", action="version", version=f"adam-jax {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small logistic regression with adam_jax.adam")
    demo.add_argument("--steps", type=int, default=300, help="number of Adam steps (default 300)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="time an Adam step against the bandwidth floor and optax")
    from adam_jax.tools import bench as bench_lib

    bench_lib.add_arguments(bench)
    bench.set_defaults(func=_bench)
    reproduce = sub.add_parser(
        "reproduce", help="run the paper's Section 6 experiments (figures 1-4)"
    )
    missing = _extras.missing_message("paper", "adam-jax reproduce")
    if missing is not None:  # still listed in --help; running it prints how to install the extra
        reproduce.add_argument("rest", nargs=argparse.REMAINDER)
        reproduce.set_defaults(func=lambda args: parser.exit(2, f"error: {missing}\n"))
    else:
        from adam_jax.tools.paper import cli as paper_cli

        paper_cli.add_arguments(reproduce)
        reproduce.set_defaults(func=_reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; Ctrl-C anywhere (start-up included) exits with code 130 and one line."""

    def body() -> int:
        args = build_parser().parse_args(argv)
        return args.func(args)

    return interruptible(body, "adam-jax: interrupted (Ctrl-C)")


def run() -> NoReturn:
    """The ``adam-jax`` console script and ``python -m adam_jax``."""
    try:
        code = main()
    except SystemExit as stop:  # ``adam-jax demo`` exits 130 itself on Ctrl-C
        if stop.code != 130:
            raise
        code = 130
    leave(code)


if __name__ == "__main__":
    run()
