"""Each script in examples/ runs as a user runs it (``python examples/NAME.py``, in a fresh
interpreter, from another folder) and prints what it promises: the loss went down, and a restored
run is the saved one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def run(name: str, tmp_path: Path) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # each script sets up the devices it needs
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def losses(stdout: str) -> tuple[float, float]:
    found = re.search(r"loss (\d+\.\d+) -> (\d+\.\d+)", stdout)
    assert found, stdout
    return float(found[1]), float(found[2])


def test_every_example_is_tested():
    tested = {"flax_nnx.py", "flax_linen.py", "equinox_mlp.py", "data_parallel.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@pytest.mark.parametrize(
    "name, restored",
    [
        ("flax_nnx.py", "restored model and optimizer equal the saved ones: True"),
        ("flax_linen.py", "restored run equals the uninterrupted one: True"),
        ("equinox_mlp.py", "restored run equals the uninterrupted one: True"),
    ],
)
def test_framework_example_trains_and_restores(name, restored, tmp_path):
    pytest.importorskip("equinox" if name.startswith("equinox") else "flax")
    stdout = run(name, tmp_path)
    first, last = losses(stdout)
    assert last < 0.1 * first, stdout
    assert re.search(r"^step 200:", stdout, re.M), stdout
    assert stdout.rstrip().endswith(restored), stdout
    assert list(tmp_path.iterdir()) == [], "an example left files behind"


def test_data_parallel_example_shards_the_batch_over_eight_devices(tmp_path):
    stdout = run("data_parallel.py", tmp_path)
    assert "8 devices, batch sharded as P('data',)" in stdout, stdout
    first, last = losses(stdout)
    assert last < 1e-3 * first, stdout
