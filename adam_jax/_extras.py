"""Optional dependencies ("extras"): one clear line when one is missing, never a raw traceback."""

from __future__ import annotations

import importlib
import sys

# extra name -> (modules it provides, what a user reads)
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "paper": (("matplotlib", "tqdm", "sklearn"), "matplotlib, tqdm, scikit-learn"),
    "checkpoint": (("orbax.checkpoint",), "orbax-checkpoint"),
}


class MissingExtraError(ImportError):
    """An optional dependency of adam_jax is not installed; the message says how to install it."""


def missing_message(extra: str, what: str) -> str | None:
    """``None`` when every module of ``extra`` imports, else one line naming the install command."""
    modules, packages = EXTRAS[extra]
    absent = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            absent.append(module)
    if not absent:
        return None
    return (
        f"{what} needs the '{extra}' extra ({packages}); missing: {', '.join(absent)}. "
        f"Install it with: pip install 'adam-jax[{extra}]'"
    )


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` (an ``ImportError``) if ``extra`` is not installed."""
    message = missing_message(extra, what)
    if message is not None:
        raise MissingExtraError(message) from None


def exit_if_missing(extra: str, what: str) -> None:
    """For command lines: print the one-line message to stderr and exit with code 2."""
    message = missing_message(extra, what)
    if message is not None:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)
