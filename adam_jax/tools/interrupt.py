"""Ctrl-C for the commands: one line and exit code 130, never a traceback or a lost result.
``kill`` (SIGTERM) and a closed terminal (SIGHUP) stop a command the same way.

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


# Stopped as Ctrl-C stops a command: Ctrl-C, ``kill`` (SIGTERM, also what a job scheduler or a
# container sends before it kills), and a closed terminal (SIGHUP). Each leaves the finished work
# and its record behind instead of ending the process where it stands.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@contextlib.contextmanager
def ctrl_c_recorded() -> Iterator[None]:
    """Within it, Ctrl-C and the other :data:`STOP_SIGNALS` go through :func:`_on_ctrl_c` (and
    :func:`check_interrupted` sees them). The record lives as long as the block: a Ctrl-C handled
    inside it does not stop whatever the same process runs after it (a second command, or a
    test)."""
    _interrupted.clear()
    previous = {}
    try:
        for signum in STOP_SIGNALS:
            if signum != signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                continue  # ignored on purpose (``nohup`` ignores SIGHUP): it stays ignored
            previous[signum] = signal.signal(signum, _on_ctrl_c)
    except ValueError:  # not the main thread: keep Python's handlers
        pass
    try:
        yield
    finally:
        _interrupted.clear()
        for signum, handler in previous.items():  # None: set outside Python, so the default
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


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
