"""Packaging a user can trust: one version string, honest bounds, a licence, complete archives.

The sdist and wheel are built here with ``python -m build --no-isolation`` (no network); CI also
installs the sdist into its fresh venv and runs the whole suite from the unpacked sdist
(``.ci/run``), so an sdist that lacks a file the tests need fails there too.
"""

from __future__ import annotations

import email
import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import jax
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import adam_jax

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
# Folders the tests read, shipped whole in the sdist (MANIFEST.in).
TEST_TREE = ["tests", "notebooks", "benchmarks", "results", "docs", "examples"]
SKIP_PARTS = {"__pycache__", ".hypothesis", ".pytest_cache", "_build"}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out


def _requirement(name: str) -> Requirement:
    (req,) = [Requirement(r) for r in PROJECT["dependencies"] if Requirement(r).name == name]
    return req


def test_one_version_string():
    version = PROJECT["version"]
    assert adam_jax.__version__ == metadata.version("adam-jax") == version
    result = subprocess.run(
        [sys.executable, "-m", "adam_jax", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"adam-jax {version}"
    script = Path(sys.executable).parent / "adam-jax"  # the console script of this environment
    if script.exists():
        result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
        assert result.stdout.strip() == f"adam-jax {version}"


def test_python_and_jax_bounds_are_the_tested_ones():
    assert PROJECT["requires-python"] == ">=3.11"
    assert Version(".".join(map(str, sys.version_info[:2]))) >= Version("3.11")
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py311"
    classifiers = PROJECT["classifiers"]
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert not any(c.endswith(":: 3.10") for c in classifiers)
    lower = {s.operator: Version(s.version) for s in _requirement("jax").specifier}[">="]
    installed = Version(jax.__version__)
    assert installed >= lower
    constraints = os.environ.get("PIP_CONSTRAINT")
    if os.environ.get("CI") and constraints:  # CI's oldest leg pins the bound's version
        assert f"jax=={lower}" in Path(constraints).read_text().split()
        assert installed == lower, f"CI's oldest leg tests jax {installed}; pyproject: >={lower}"


def test_licence_is_shipped_and_matches_the_declared_one():
    text = (REPO_ROOT / "LICENSE").read_text()
    assert PROJECT["license"] == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def test_sdist_carries_a_runnable_test_tree(dist):
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    needed = {"LICENSE", "README.md", "pyproject.toml"}
    for folder in TEST_TREE:
        for path in (REPO_ROOT / folder).rglob("*"):
            if path.is_file() and not SKIP_PARTS & set(path.parts) and path.suffix != ".pyc":
                needed.add(path.relative_to(REPO_ROOT).as_posix())
    assert {"tests/conftest.py", "tests/helpers.py", "tests/reference.py"} <= needed
    missing = sorted(needed - members)
    assert not missing, f"the sdist lacks files the tests need: {missing}"


def test_wheel_metadata(dist):
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(archive.read(meta_name))
    assert meta["Version"] == PROJECT["version"]
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["License-Expression"] == "Apache-2.0"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "adam_jax/py.typed" in names
    assert not any(n.startswith("tests/") for n in names)  # tests ship in the sdist only
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    assert str(next(r for r in requires if r.name == "jax").specifier) == str(
        _requirement("jax").specifier
    )
