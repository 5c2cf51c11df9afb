"""Every ```python block of README.md runs as it is, each in a fresh interpreter.

A block may not lean on names from another block (``params``, ``grads``, ``optax``, ``jnp``): a
user copies one block at a time. Blocks run in a temporary folder with eight virtual CPU devices,
as the README's Installation section tells users to set up.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
README = (REPO_ROOT / "README.md").read_text()


def _python_blocks() -> list[tuple[str, str]]:
    """(id, code) for every ```python block, the id naming the section heading and position."""
    blocks, heading, counts = [], "top", {}
    for match in re.finditer(r"^(#{2,3} [^\n]*)$|^```python\n(.*?)^```", README, re.M | re.S):
        if match.group(1):
            heading = re.sub(r"\W+", "-", match.group(1).lstrip("# ")).strip("-").lower()
            continue
        counts[heading] = counts.get(heading, 0) + 1
        blocks.append((f"{heading}-{counts[heading]}", match.group(2)))
    return blocks


BLOCKS = _python_blocks()


def _run_block(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[i for i, _ in BLOCKS])
def test_block_runs(code, tmp_path):
    result = _run_block(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_training_example_loss_goes_down(tmp_path):
    """The complete example near the top prints a loss per epoch that falls every epoch."""
    (block_id, code) = BLOCKS[0]
    assert block_id.startswith("quickstart"), block_id
    result = _run_block(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", result.stdout)]
    assert len(losses) >= 3, result.stdout
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.6 * losses[0], losses


def test_installation_section_covers_every_extra():
    section = README.split("## Installation", 1)[1].split("\n## ", 1)[0]
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in ("paper", "checkpoint", "test"):
        assert extra in extras
        assert f"| `{extra}` |" in section, f"the Installation table lacks the {extra!r} extra"
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=" in section
    assert "GPU" in section and "TPU" in section
    assert "Tested versions" in section
