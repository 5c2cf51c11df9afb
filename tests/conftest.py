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

import pytest

from tests.xla_env import xla_flags  # plain strings: imports nothing, JAX included

os.environ.setdefault("XLA_FLAGS", xla_flags(8))
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


@pytest.fixture
def shared_jax_cache(tmp_path_factory, monkeypatch):
    """One persistent JAX compilation cache for the JAX processes that tests start, shared by the
    whole run (both xdist workers): ``reproduce --tiny`` in a subprocess, in the notebook's kernel
    and in ``reproduce --jobs 2``'s figure processes compiles the same training steps, and most of
    a tiny run is compilation; every process after the first loads them instead. Only for JAX in
    subprocesses: the test process's own JAX read its cache settings at import."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, above each worker's own
    path = root / "jax-cache"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(path))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    return path


# The slowest tests (tens of seconds to minutes each on CI), run first: --maxschedchunk=1 (set
# in pytest_configure) makes pytest-xdist hand out tests one at a time (after two each to start), so
# the long ones overlap the many short ones instead of one of them ending the run while the other
# worker idles. The first two go to one worker, the next two to the other. Only tests without
# module- or class-scoped fixtures: moved away from its module, such a fixture would be set up
# twice. The notebook test keeps its place, long after the parallel-figures test has filled the
# shared JAX cache (shared_jax_cache) that both use.
_SLOW_FIRST = (
    "tests/test_paper_runner.py::test_figures_in_parallel_equal_one_process_and_survive_ctrl_c",
    "tests/test_paper_runner.py::test_reproduce_resumed_after_ctrl_c_equals_an_uninterrupted_run",
    "tests/test_quantize.py::test_final_training_loss_within_one_percent_of_float32_state",
    "tests/test_bench_cli.py::test_json_records_rows_device_versions_and_command",
    "tests/test_bench_cli.py::test_8bit_comparison_prints_its_table_and_writes_its_record",
    "tests/test_paper_models.py::test_every_convolution_tap_gets_gradient_on_the_full_runs_images",
    "tests/test_quantize.py::test_adamax_training_loss_within_one_percent_of_float32_state",
    "tests/test_examples.py::test_framework_example_trains_and_restores",
    "tests/test_properties.py::test_adam_matches_reference_on_any_tree",
    "tests/test_properties.py::test_adamax_matches_reference_on_any_tree",
)


def pytest_configure(config):
    # Set here rather than in pyproject's addopts, so that a pytest without xdist (-p no:xdist,
    # as test_reliability_table runs one) still accepts the options. Passed explicitly, it wins.
    if getattr(config.option, "maxschedchunk", False) is None:
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("[")[0], len(rank)))  # stable
