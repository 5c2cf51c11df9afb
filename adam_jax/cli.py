"""The ``adam-jax`` command line."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from adam_jax import _extras


def _demo(args: argparse.Namespace) -> int:
    from adam_jax import demo

    demo.run(steps=args.steps, seed=args.seed)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from adam_jax.paper import cli as paper_cli

    return paper_cli.reproduce(args)


def _bench(args: argparse.Namespace) -> int:
    from adam_jax import bench

    return bench.main(args)


def _version() -> str:
    import adam_jax

    return adam_jax.__version__


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit 2), without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def memory_limit(device=None) -> tuple[int, str] | None:
    """The bytes of memory arrays can take, and whose memory it is: the JAX ``device``'s limit
    when it reports one (GPU, TPU), else this machine's physical memory; None when unknown."""
    stats = device.memory_stats() if device is not None else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"the memory of the {device.device_kind}"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
        return None


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB"


def too_big(needed: int, what: str, fix: str, device=None) -> str | None:
    """The one-line refusal of a run whose estimated ``needed`` bytes exceed
    :func:`memory_limit`, else None: checked before anything is allocated."""
    limit = memory_limit(device)
    if limit is None or needed <= limit[0]:
        return None
    return f"{what} needs about {gib(needed)}, more than the {gib(limit[0])} of {limit[1]}; {fix}"


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
    from adam_jax import bench as bench_lib

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
        from adam_jax.paper import cli as paper_cli

        paper_cli.add_arguments(reproduce)
        reproduce.set_defaults(func=_reproduce)
    return parser


_interrupted = threading.Event()


def _on_ctrl_c(signum: int, frame) -> None:
    """Ctrl-C: remember it, then raise KeyboardInterrupt as Python's own handler does, except
    where raising would do harm; there the flag alone records it, and long loops raise it later
    with :func:`check_interrupted` (:func:`main` checks it before exiting too). The exceptions:

    - inside a garbage-collection callback (JAX installs one), where Python drops the exception
      and prints it;
    - inside an import, where it leaves a half-initialised module behind: an interrupted
      ``import torch`` ended the process with SIGINT or abort (exit -2 or -6) instead of 130."""
    _interrupted.set()
    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_filename.startswith("<frozen importlib"):
            return
        frame = frame.f_back
    raise KeyboardInterrupt


def check_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed, even when its exception was lost."""
    if _interrupted.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c_recorded() -> Iterator[None]:
    """Within it, Ctrl-C goes through :func:`_on_ctrl_c` (and :func:`check_interrupted` sees it)."""
    _interrupted.clear()
    try:
        previous = signal.signal(signal.SIGINT, _on_ctrl_c)
    except ValueError:  # not the main thread: keep Python's handler
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def interruptible(body: Callable[[], int], message: str) -> int:
    """Run ``body`` with Ctrl-C recorded; return its exit code, or 130 after printing ``message``
    when Ctrl-C stopped it. An error raised after Ctrl-C counts as the interruption: a Ctrl-C that
    lands in a Python callback of C code can come back wrapped (NumPy and jaxlib raise
    ``SystemError: ... returned a result with an exception set``)."""
    with ctrl_c_recorded():
        try:
            code = body()
            if code != 130:  # 130: the command has said it was interrupted
                check_interrupted()
            return code
        except KeyboardInterrupt:
            pass
        except Exception:
            if not _interrupted.is_set():
                raise
        print(message, file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; Ctrl-C anywhere (start-up included) exits with code 130 and one line."""

    def body() -> int:
        args = build_parser().parse_args(argv)
        return args.func(args)

    return interruptible(body, "adam-jax: interrupted (Ctrl-C)")


def leave(code: int) -> NoReturn:
    """End the process with ``code``. After Ctrl-C (130) it flushes the output and ends at once,
    without Python's shutdown: when Ctrl-C had interrupted an XLA compilation, that shutdown
    segfaulted (exit -11 instead of 130, most runs of ``adam-jax bench`` interrupted 2-3 s in on
    this 2-core CPU). Nothing is lost: finished results are written atomically before 130 is
    returned."""
    if code != 130:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(130)


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
