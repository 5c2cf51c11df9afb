"""Test-session set-up: eight virtual CPU devices (before JAX is imported anywhere), and no warning
may come out of adam_jax's own code.

A filter on the module a warning is attributed to is not enough: libraries attribute theirs to
their own internals (JAX's complex-to-real cast warning names ``jax/_src/numpy/array_methods.py``).
So :func:`_warn_guard` fails any warning issued while a frame of the ``adam_jax`` package is on the
call stack, whoever issues it. It is installed before JAX is imported, so modules that bind
``warnings.warn`` at import time get the guarded version.
"""

import importlib.util
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _package_dirs() -> tuple[str, ...]:
    """The checkout's ``adam_jax/`` and the one Python will import (they differ when installed)."""
    dirs = {str(Path(__file__).resolve().parent.parent / "adam_jax")}
    spec = importlib.util.find_spec("adam_jax")  # locates the package without importing it
    if spec is not None and spec.origin:
        dirs.add(str(Path(spec.origin).resolve().parent))
    return tuple(d + os.sep for d in dirs)


_PACKAGE_DIRS = _package_dirs()
_warn, _warn_explicit = warnings.warn, warnings.warn_explicit


class AdamJaxWarningError(AssertionError):
    """A warning was issued from inside adam_jax code (tests forbid it)."""


def _adam_jax_frame() -> str | None:
    """``file:line`` of the innermost adam_jax frame on the stack, if any."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(_PACKAGE_DIRS):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _check(message, category) -> None:
    where = _adam_jax_frame()
    if where is not None:
        kind = category.__name__ if isinstance(category, type) else type(message).__name__
        raise AdamJaxWarningError(f"{kind} raised inside adam_jax ({where}): {message}")


def _guarded_warn(message, category=None, stacklevel=1, source=None, **kwargs):
    _check(message, category or UserWarning)
    return _warn(message, category, stacklevel + 1, source, **kwargs)


def _guarded_warn_explicit(message, category, *args, **kwargs):
    _check(message, category)
    return _warn_explicit(message, category, *args, **kwargs)


def _warn_guard() -> None:
    warnings.warn = _guarded_warn
    warnings.warn_explicit = _guarded_warn_explicit


_warn_guard()


def pytest_report_header(config) -> str:
    """The versions this run tests, in pytest's header (CI runs one leg per tested pair)."""
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    names = ("jax", "jaxlib", "optax", "chex", "numpy", "torch", "keras")
    return f"Python {sys.version.split()[0]}: " + ", ".join(f"{n} {version(n)}" for n in names)
