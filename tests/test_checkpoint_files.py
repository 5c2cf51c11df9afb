"""Checkpoint files: damage is detected, foreign folders and links are refused, and replacing a
checkpoint survives a SIGKILL at any moment (real kills of a real process)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import adam_jax

REPO_ROOT = Path(__file__).resolve().parent.parent
TX = adam_jax.adam(1e-2)


def _params(value: float):
    return {"w": jnp.full((40, 75), value, jnp.float32), "b": jnp.full((7,), value)}


def _save(path: Path, value: float, **kwargs) -> None:
    params = _params(value)
    adam_jax.save_checkpoint(path, params, TX.init(params), **kwargs)


def _restore(path: Path):
    return adam_jax.restore_checkpoint(path, TX, _params(0.0))


def _largest_file(item_dir: Path) -> Path:
    return max((p for p in item_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("item", ["params", "opt_state"])
def test_a_flipped_byte_is_detected_and_named(tmp_path, item):
    path = tmp_path / "ckpt"
    _save(path, 1.5)
    victim = _largest_file(path / item)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    rel = victim.relative_to(path).as_posix()
    with pytest.raises(ValueError, match=rf"file {rel} of item '{item}'.*does not match"):
        _restore(path)


def test_a_missing_item_is_a_value_error(tmp_path):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    shutil.rmtree(path / "opt_state")
    with pytest.raises(ValueError, match="has no 'opt_state' item"):
        _restore(path)


def test_a_link_out_of_the_checkpoint_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _save(a, 1.0)
    _save(b, 2.0)
    shutil.rmtree(a / "params")
    os.symlink(b / "params", a / "params")
    with pytest.raises(ValueError, match=r"is a link to .* outside the checkpoint"):
        _restore(a)


def test_force_refuses_a_folder_that_is_not_a_checkpoint(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not an adam_jax checkpoint"):
        _save(folder, 1.0, force=True)
    assert (folder / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_existing_checkpoint_needs_force_and_force_replaces_it(tmp_path):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    with pytest.raises(ValueError, match="already exists; pass force=True"):
        _save(path, 2.0)
    _save(path, 2.0, force=True)
    params, _ = _restore(path)
    np.testing.assert_array_equal(params["w"], 2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging leftovers


@pytest.mark.parametrize("name", ["ck[1]", "ck]", "back\\slash"])
def test_unsupported_folder_names_are_refused_before_writing(tmp_path, name):
    with pytest.raises(ValueError, match="cannot be written to or read from paths"):
        _save(tmp_path / name, 1.0)
    assert list(tmp_path.iterdir()) == []


# ---- crash safety: a real process, SIGKILLed at chosen moments of a replacement ----

_WORKER = textwrap.dedent(
    """
    import os, signal, sys
    import jax.numpy as jnp
    import adam_jax
    from adam_jax import _ckpt_files

    path, moment = sys.argv[1], sys.argv[2]
    calls = {"n": 0}

    class Killing:
        # Stands in for a module inside adam_jax._ckpt_files only: the nth call to one of its
        # functions SIGKILLs this process instead.

        def __init__(self, module, name, nth):
            self.module, self.name, self.nth = module, name, nth

        def __getattr__(self, attr):
            real = getattr(self.module, attr)
            if attr != self.name:
                return real

            def wrapper(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == self.nth:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*args, **kwargs)

            return wrapper

    if moment == "before-manifest":  # orbax has written everything; no manifest yet
        _ckpt_files.json = Killing(_ckpt_files.json, "dump", 1)
    elif moment == "manifest-not-renamed":  # manifest written to its temporary name
        _ckpt_files.os = Killing(os, "rename", 1)
    elif moment == "old-moved-away":  # NAME renamed to -old, -new not yet renamed to NAME
        _ckpt_files.os = Killing(os, "rename", 3)
    elif moment == "new-in-place":  # NAME is the new checkpoint, -old not yet deleted
        _ckpt_files.shutil = Killing(_ckpt_files.shutil, "rmtree", 1)
    params = {"w": jnp.full((40, 75), 2.0, jnp.float32), "b": jnp.full((7,), 2.0)}
    tx = adam_jax.adam(1e-2)
    print("ready", flush=True)
    adam_jax.save_checkpoint(path, params, tx.init(params), force=True)
    print("saved", flush=True)
    """
)

MOMENTS = ["before-manifest", "manifest-not-renamed", "old-moved-away", "new-in-place"]


def _assert_old_or_new(path: Path) -> float:
    params, _ = _restore(path)
    values = {float(v) for v in np.unique(np.concatenate([params["w"].ravel(), params["b"]]))}
    assert values in ({1.0}, {2.0}), values
    return values.pop()


@pytest.mark.parametrize("moment", MOMENTS)
def test_sigkill_during_replacement_leaves_a_checkpoint(tmp_path, moment):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    result = subprocess.run(
        [sys.executable, "-c", _WORKER, str(path), moment],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    value = _assert_old_or_new(path)
    # the new checkpoint counts from the moment its manifest is in place: then it is rolled forward
    expected = 2.0 if moment in ("old-moved-away", "new-in-place") else 1.0
    assert value == expected
    # and the next save works and cleans up
    _save(path, 3.0, force=True)
    params, _ = _restore(path)
    np.testing.assert_array_equal(params["b"], 3.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_sigkill_at_timed_moments_leaves_a_checkpoint(tmp_path):
    """Kills at several delays into the replacement, wherever they land (orbax's writing too)."""
    outcomes = []
    for delay in (0.2, 0.6, 1.2, 2.5):
        path = tmp_path / f"ckpt{delay}"
        _save(path, 1.0)
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), "none"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        outcomes.append(_assert_old_or_new(path))
    assert set(outcomes) <= {1.0, 2.0}
