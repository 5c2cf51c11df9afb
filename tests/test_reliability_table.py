"""The fault-family table of the docs' Reliability page, generated from the test suite itself.

Each family names the tests that try it; "cases tried" is the number of test cases pytest collects
for them (parametrizations included), so the docs cannot claim more than the suite runs. The docs
build calls :func:`table`; ``python -m tests.test_reliability_table`` prints it.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Family:
    name: str
    tests: tuple[str, ...]  # "tests/module.py" or "tests/module.py::name_prefix"
    holds: str


FAMILIES = (
    Family(
        "bad hyperparameters and arguments",
        (
            "tests/test_validation.py::test_interval",
            "tests/test_validation.py::test_wrong_kind",
            "tests/test_validation.py::test_every_public_constructor",
            "tests/test_behaviour.py::test_bad",
            "tests/test_contracts.py::test_injected",
            "tests/test_contracts.py::test_numpy",
        ),
        "ValueError/TypeError naming the argument, its value and the allowed range, at build time; "
        "injected values too when concrete",
    ),
    Family(
        "mismatched gradients, params and states",
        (
            "tests/test_errors.py::test_user_sees",
            "tests/test_validation.py::test_every_update",
            "tests/test_validation.py::test_structure",
            "tests/test_validation.py::test_state_corrupted",
            "tests/test_contracts.py::test_update_refuses",
        ),
        "error naming the leaf path and both shapes/dtypes, or both state types; free under jit",
    ),
    Family(
        "NaN and inf gradients",
        (
            "tests/test_validation.py::test_nonfinite",
            "tests/test_behaviour.py::test_apply_if_finite",
        ),
        "with optax.apply_if_finite the step is skipped and the run ends where the run without "
        "that batch ends",
    ),
    Family(
        "huge gradients, narrow dtypes, saturated counters",
        (
            "tests/test_edges.py",
            "tests/test_behaviour.py::test_step_count",
            "tests/test_behaviour.py::test_half_precision",
        ),
        "moments exact while representable, then saturated (never inf); updates finite",
    ),
    Family(
        "random trees, shapes, dtypes and hyperparameters",
        ("tests/test_properties.py",),
        "every step equals the float64 reference within the dtype's precision; jit = no jit",
    ),
    Family(
        "8-bit state: zero, tiny and huge blocks",
        ("tests/test_quantize.py",),
        "state finite; losses within 1% of float32 Adam",
    ),
    Family(
        "checkpoint damage, foreign folders, links, names",
        (
            "tests/test_checkpoint_files.py::test_a",
            "tests/test_checkpoint_files.py::test_force",
            "tests/test_checkpoint_files.py::test_existing",
            "tests/test_checkpoint_files.py::test_unsupported",
            "tests/test_checkpoint.py",
        ),
        "ValueError naming the damaged file and item, or refusing before anything is written",
    ),
    Family(
        "steered manifests, concurrent saves, read-only and odd folders",
        ("tests/test_checkpoint_faults.py",),
        "paths checked before any file is opened; a missing or malformed manifest refused; saves "
        "serialised by a lock; a restore never writes",
    ),
    Family(
        "restores into a changed optimizer or framework",
        ("tests/test_checkpoint_restores.py", "tests/test_convert.py"),
        "counts and moments carried over; what differs said in a few lines; the optimizer given wins "
        "where allowed",
    ),
    Family(
        "serializers and rebuilt optimizers",
        ("tests/test_dropin.py",),
        "every state round-trips flax, pickle, equinox and orbax and continues bit-identically; "
        "no retrace when the optimizer is rebuilt",
    ),
    Family(
        "8-bit state behind maximize, decay, clipping, MultiSteps, NaN",
        ("tests/test_quantize_presets.py",),
        "block scales hold whatever runs before the rescaler; moments within the format's "
        "precision of float32's",
    ),
    Family(
        "flat_moments compositions, masks and mixed dtypes",
        ("tests/test_flat_faults.py",),
        "the default layout's answer, or an error naming the cause and the fix",
    ),
    Family(
        "monitor over frozen parameters, out-of-range cadence",
        (
            "tests/test_monitor.py::test_statistics_average",
            "tests/test_monitor.py::test_every_beyond",
        ),
        "means over the trained parameters only; every beyond int32 refused at construction",
    ),
    Family(
        "commands that could lose results or exhaust memory",
        ("tests/test_command_faults.py",),
        "other figures' results kept; sizes checked before allocation; one line and exit 2",
    ),
    Family(
        "SIGKILL while saving or training",
        ("tests/test_checkpoint_files.py::test_sigkill", "tests/test_resume.py"),
        "the old or the new checkpoint restores; resumed runs are bit-identical",
    ),
    Family(
        "malformed data files and command lines",
        (
            "tests/test_paper_data.py",
            "tests/test_paper_runner.py::test_out",
            "tests/test_paper_runner.py::test_reproduce",
            "tests/test_extras.py",
        ),
        "exit code 2 and one line naming the file, line or argument; no traceback",
    ),
    Family(
        "newer JAX (removed experimental APIs), Python-scalar leaves",
        ("tests/test_jax_compat.py", "tests/test_optax_usage.py"),
        "imports and shards state without jax.experimental; takes what optax takes",
    ),
)

SCALE_LIMIT = (
    "| compiling one jitted update over 20,000 leaves | 1 (an earlier review; not in the suite) | "
    "ran out of memory at 23.5 GB on this 24 GB machine, as optax.adam does; without jit 20k "
    "leaves work. `optax.flatten(adam_jax.adam(...))` gives the update one buffer per moment "
    "(a workaround whose compile at 20k leaves was not measured here) | — |"
)


def _collected() -> list[str]:
    modules = sorted({p.split("::")[0] for f in FAMILIES for p in f.tests})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            *modules,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [line.strip() for line in result.stdout.splitlines() if "::" in line]


def table() -> str:
    ids = _collected()
    rows = ["| fault family | cases tried | what holds | tests |", "|---|---|---|---|"]
    for family in FAMILIES:
        count = 0
        for pattern in family.tests:
            module, _, prefix = pattern.partition("::")
            count += sum(
                1 for i in ids if i.split("::")[0] == module and i.split("::")[1].startswith(prefix)
            )
        assert count > 0, f"no test collected for {family.name!r}: {family.tests}"
        where = ", ".join(
            sorted({f"`{p.split('::')[0].removeprefix('tests/')}`" for p in family.tests})
        )
        rows.append(f"| {family.name} | {count} | {family.holds} | {where} |")
    rows.append(SCALE_LIMIT)
    return "\n".join(rows)


def test_every_family_names_test_modules_that_exist():
    """The counting itself runs when the docs are built (tests/test_docs.py); here, cheaply, that
    every family points at test modules of this suite."""
    for family in FAMILIES:
        for pattern in family.tests:
            module = pattern.split("::")[0]
            assert (REPO_ROOT / module).is_file(), f"{family.name!r} names {module}, which is gone"


if __name__ == "__main__":
    print(table())
