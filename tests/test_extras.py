"""Without an optional extra, the user gets one line naming it and the command that installs it.

The extras are made missing with an import hook (``tests/blocked_imports.py``) in a subprocess,
as on a machine where they were never installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.blocked_imports import env_without

REPO_ROOT = Path(__file__).resolve().parent.parent
PAPER_MODULES = ["matplotlib", "tqdm", "sklearn"]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args",
    [["-m", "adam_jax", "reproduce", "all", "--quick"], ["-m", "adam_jax.paper", "fig1"]],
    ids=["adam-jax reproduce", "python -m adam_jax.paper"],
)
@pytest.mark.parametrize("blocked", [PAPER_MODULES, ["sklearn"]], ids=["all", "scikit-learn"])
def test_reproduce_without_the_paper_extra(tmp_path, args, blocked):
    result = _run(args, env_without(tmp_path, blocked))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "'paper' extra" in lines[0]
    assert "pip install 'adam-jax[paper]'" in lines[0]
    assert not (tmp_path / "adam_jax_results").exists()


def test_other_commands_work_without_the_paper_extra(tmp_path):
    result = _run(["-m", "adam_jax", "demo", "--steps", "5"], env_without(tmp_path, PAPER_MODULES))
    assert result.returncode == 0, result.stderr
    result = _run(["-m", "adam_jax", "--version"], env_without(tmp_path, PAPER_MODULES))
    assert result.returncode == 0 and result.stdout.startswith("adam-jax "), result.stderr


def test_checkpoints_without_the_checkpoint_extra(tmp_path):
    code = (
        "import jax.numpy as jnp, adam_jax\n"
        "params = {'w': jnp.ones(3)}\n"
        "tx = adam_jax.adam()\n"
        "try:\n"
        "    adam_jax.save_checkpoint('ckpt', params, tx.init(params))\n"
        "except ImportError as err:\n"
        "    print(type(err).__name__, '|', err, '|', err.__cause__, err.__suppress_context__)\n"
    )
    result = _run(["-c", code], env_without(tmp_path, ["orbax"]))
    assert result.returncode == 0, result.stderr
    kind, message, cause = result.stdout.strip().split(" | ")
    assert kind == "MissingExtraError"
    assert "'checkpoint' extra" in message and "pip install 'adam-jax[checkpoint]'" in message
    assert "\n" not in message
    assert cause == "None True"  # no chained traceback from the failed import
    assert not (REPO_ROOT / "ckpt").exists()
