"""README.md is the landing page: its example runs and trains, its links lead somewhere, and CI
can read its test command. What the README says about behaviour is tested where the behaviour
lives; the pages under docs/ and their examples are tested by tests/test_docs.py."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
README = (REPO_ROOT / "README.md").read_text()


def test_training_example_runs_and_the_loss_falls(tmp_path):
    (code,) = re.findall(r"^```python\n(.*?)^```", README, re.M | re.S)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", result.stdout)]
    assert len(losses) == 4 and all(b < a for a, b in itertools.pairwise(losses))
    assert losses[-1] < 0.05, losses


def test_ci_reads_the_test_command_from_the_quickstart():
    """.ci/run runs the second non-blank line of the first fenced block after "## Quickstart"
    (its awk line); the same reading here."""
    section = README.split("\n## Quickstart\n", 1)[1]
    block = section.split("```", 2)[1].split("\n", 1)[1]
    lines = [line for line in block.splitlines() if line.strip()]
    assert lines[1] == 'pip install ".[test]" && python -m pytest -n 2'


def test_every_extra_is_listed():
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    missing = [name for name in extras if f"| `{name}` |" not in README]
    assert not missing, f"README.md's extras table lacks {missing}"


def test_relative_links_lead_to_files():
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README)
    assert len(links) >= 10
    missing = [link for link in links if not (REPO_ROOT / link).exists()]
    assert not missing, missing
