"""Ctrl-C for the commands: one line and exit code 130, never a traceback or a lost result.

Shared by ``adam-jax`` and ``python -m adam_jax.paper``; long loops call :func:`check_interrupted`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn

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
    """Within it, Ctrl-C goes through :func:`_on_ctrl_c` (and :func:`check_interrupted` sees it).
    The record lives as long as the block: a Ctrl-C handled inside it does not stop whatever the
    same process runs after it (a second command, or a test)."""
    _interrupted.clear()
    try:
        previous = signal.signal(signal.SIGINT, _on_ctrl_c)
    except ValueError:  # not the main thread: keep Python's handler
        previous = None
    try:
        yield
    finally:
        _interrupted.clear()
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
