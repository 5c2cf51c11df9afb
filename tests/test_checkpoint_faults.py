"""Checkpoint faults found by review: a manifest that steers the reader, concurrent saves and
restores, long names, read-only folders, links as the checkpoint path.

Read-only cases: the tests run as root, which ignores permission bits. A restore is checked to
write nothing by making every Python-level write raise during it and by comparing the folder's
listing (names, sizes, times) before and after; the real read-only cases run in a subprocess as
root without capabilities (``setpriv --bounding-set=-all``), for which permission bits count.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import adam_jax
from adam_jax import _ckpt_files

REPO_ROOT = Path(__file__).resolve().parent.parent
TX = adam_jax.adam(1e-2)
MANIFEST = "adam_jax_manifest.json"


def _params(value: float):
    return {"w": jnp.full((4, 3), value, jnp.float32), "b": jnp.full((3,), value)}


def _save(path: Path, value: float, **kwargs) -> None:
    params = _params(value)
    adam_jax.save_checkpoint(path, params, TX.init(params), **kwargs)


def _restore(path: Path) -> float:
    params, _ = adam_jax.restore_checkpoint(path, TX, _params(0.0))
    values = np.unique(np.concatenate([np.ravel(params["w"]), np.ravel(params["b"])]))
    assert values.size == 1, values
    return float(values[0])


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())


def _write_manifest(path: Path, data) -> None:
    (path / MANIFEST).write_text(json.dumps(data))


def _listing(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind, size, mode and modification time."""
    found = {}
    for p in [root, *root.rglob("*")]:
        st = p.lstat()
        found[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return found


def _largest_file(item_dir: Path) -> Path:
    return max((p for p in item_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# ---- the manifest cannot steer the reader ----


@pytest.mark.parametrize(
    "entry", ["../outside.txt", "params/../../outside.txt", "{tmp}/outside.txt", "params/./x"]
)
def test_a_manifest_entry_outside_the_checkpoint_is_refused_unread(tmp_path, monkeypatch, entry):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    outside = tmp_path / "outside.txt"
    outside.write_text("not part of any checkpoint")
    entry = entry.format(tmp=tmp_path)
    data = _manifest(path)
    data["sha256"][entry] = hashlib.sha256(outside.read_bytes()).hexdigest()
    _write_manifest(path, data)
    opened = []
    for module in (builtins, io):

        def spy(file, *args, _real=module.open, **kwargs):
            opened.append(str(file))
            return _real(file, *args, **kwargs)

        monkeypatch.setattr(module, "open", spy)
    with pytest.raises(ValueError, match=rf"entry '{re.escape(entry)}'.*(outside|not a plain)"):
        _restore(path)
    assert str(outside) not in opened and not any("outside.txt" in f for f in opened)


def test_a_manifest_entry_through_a_link_out_of_the_checkpoint_is_refused(tmp_path):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x").write_text("outside")
    os.symlink(tmp_path / "elsewhere", path / "params" / "door")
    data = _manifest(path)
    data["sha256"]["params/door/x"] = hashlib.sha256(b"outside").hexdigest()
    _write_manifest(path, data)
    with pytest.raises(ValueError, match=r"outside the checkpoint"):
        _restore(path)


def test_a_checkpoint_without_manifest_is_refused(tmp_path):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    (path / MANIFEST).unlink()
    _flip_a_byte(_largest_file(path / "params"))
    with pytest.raises(ValueError, match=r"has no adam_jax_manifest.json.*adam_jax 0\.3"):
        _restore(path)


def test_a_file_not_in_the_manifest_is_refused(tmp_path):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    (path / "params" / "added.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match=r"params/added.bin.*not listed in its manifest"):
        _restore(path)


def test_a_listed_file_that_is_missing_is_refused(tmp_path):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    _largest_file(path / "opt_state").unlink()
    with pytest.raises(ValueError, match=r"of item 'opt_state' is missing"):
        _restore(path)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: {**d, "sha256": None},
        lambda d: {**d, "sha256": []},
        lambda d: {**d, "sha256": "params"},
        lambda d: [d],
        lambda d: "sha256",
        lambda d: {k: v for k, v in d.items() if k != "sha256"},
        lambda d: {**d, "sha256": {k: None for k in d["sha256"]}},
        lambda d: {**d, "sha256": {k: [v] for k, v in d["sha256"].items()}},
        lambda d: {**d, "sha256": {k: 7 for k in d["sha256"]}},
        lambda d: {**d, "sha256": {k: "abc" for k in d["sha256"]}},
        lambda d: {**d, "format": 99},
    ],
    ids=[
        "null",
        "list",
        "string",
        "top-list",
        "top-string",
        "no-sha256",
        "null-digest",
        "list-digest",
        "int-digest",
        "short-digest",
        "format",
    ],
)
def test_a_malformed_manifest_is_a_value_error_naming_it(tmp_path, damage):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    _write_manifest(path, damage(_manifest(path)))
    with pytest.raises(ValueError, match=r"adam_jax_manifest.json is damaged"):
        _restore(path)


def test_a_manifest_that_is_not_json_is_a_value_error(tmp_path):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    (path / MANIFEST).write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match=r"adam_jax_manifest.json is damaged"):
        _restore(path)


# ---- restoring writes nothing ----


def _forbid_writes(monkeypatch) -> None:
    """Every Python-level way to change a file system raises, as on a read-only folder."""

    def refuse(name):
        def raiser(*args, **kwargs):
            raise AssertionError(f"restore wrote: {name}{args}")

        return raiser

    for name in ("rename", "replace", "remove", "unlink", "rmdir", "mkdir", "makedirs", "symlink"):
        monkeypatch.setattr(os, name, refuse(f"os.{name}"))
    monkeypatch.setattr(shutil, "rmtree", refuse("shutil.rmtree"))
    monkeypatch.setattr(shutil, "move", refuse("shutil.move"))
    for module in (builtins, io):
        real = module.open

        def checked(file, mode="r", *args, _real=real, **kwargs):
            if any(c in mode for c in "wax+"):
                raise AssertionError(f"restore opened {file} with mode {mode!r}")
            return _real(file, mode, *args, **kwargs)

        monkeypatch.setattr(module, "open", checked)
    real_os_open = os.open

    def os_open(file, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
            raise AssertionError(f"restore opened {file} for writing")
        return real_os_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)


def _restore_without_writing(tmp_path: Path, path: Path, monkeypatch) -> float:
    before = _listing(tmp_path)
    with monkeypatch.context() as m:
        _forbid_writes(m)
        value = _restore(path)
    assert _listing(tmp_path) == before
    return value


def test_restore_writes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    assert _restore_without_writing(tmp_path, path, monkeypatch) == 1.0
    assert not list(tmp_path.rglob("*orbax-checkpoint-tmp*"))


@pytest.mark.parametrize("left", ["new", "old", "old-and-incomplete-new"])
def test_restore_reads_what_an_interrupted_swap_left_without_moving_it(tmp_path, monkeypatch, left):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    if left == "new":  # killed between "rename NAME to -old" and "rename -new to NAME"
        os.rename(path, _ckpt_files.sibling(path, "new"))
    else:
        os.rename(path, _ckpt_files.sibling(path, "old"))
    if left == "old-and-incomplete-new":  # the new one's manifest was never written
        _save(tmp_path / "other", 2.0)
        (tmp_path / "other" / MANIFEST).unlink()
        os.rename(tmp_path / "other", _ckpt_files.sibling(path, "new"))
    assert _restore_without_writing(tmp_path, path, monkeypatch) == 1.0
    _save(path, 3.0, force=True)  # the next save finishes the swap and cleans up
    assert _restore(path) == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_restore_during_a_save_leaves_the_save_alone(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    seen = []
    real = _ckpt_files.write_manifest

    def restore_then_write(staging):
        seen.append(_restore(path))  # another reader, while the new checkpoint is being written
        real(staging)

    monkeypatch.setattr(_ckpt_files, "write_manifest", restore_then_write)
    _save(path, 2.0, force=True)
    monkeypatch.undo()
    assert seen == [1.0]
    assert _restore(path) == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_save_and_restore_leave_no_orbax_temporary_folders(tmp_path):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    _save(path, 2.0, force=True)
    _restore(path)
    assert not [p for p in tmp_path.rglob("*") if "orbax-checkpoint-tmp" in p.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# ---- names and links ----


def test_a_long_folder_name_saves_and_restores(tmp_path):
    path = tmp_path / ("c" * 240)
    _save(path, 1.0)
    _save(path, 2.0, force=True)
    assert _restore(path) == 2.0
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_folder_name_longer_than_the_file_system_allows_is_refused_up_front(tmp_path):
    with pytest.raises(ValueError, match=r"256 bytes long; file systems allow at most 255"):
        _save(tmp_path / ("c" * 256), 1.0)
    assert list(tmp_path.iterdir()) == []


def test_saving_to_a_link_is_refused_with_the_real_path_and_restoring_follows_it(tmp_path):
    real = tmp_path / "real"
    _save(real, 1.0)
    link = tmp_path / "link"
    os.symlink(real, link)
    message = rf"{re.escape(str(link))} is a symbolic link to {re.escape(str(real))}.*real path"
    with pytest.raises(ValueError, match=message):
        _save(link, 2.0, force=True)
    assert _restore(link) == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


# ---- read-only folders: a subprocess without capabilities, for which permission bits count ----

_UNPRIVILEGED = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if os.geteuid() == 0 else []

_RO_WORKER = textwrap.dedent(
    """
    import sys
    import jax.numpy as jnp
    import numpy as np
    import adam_jax

    action, path = sys.argv[1], sys.argv[2]
    tx = adam_jax.adam(1e-2)
    params = {"w": jnp.full((4, 3), 2.0, jnp.float32), "b": jnp.full((3,), 2.0)}
    try:
        if action == "save":
            state = tx.init(params)
            print("saving", flush=True)
            adam_jax.save_checkpoint(path, params, state, force=True)
        restored, _ = adam_jax.restore_checkpoint(path, tx, params)
        print("value", float(np.ravel(restored["b"])[0]))
    except Exception as err:
        print("error", type(err).__name__, err)
    """
)


def _run_unprivileged(*args: str) -> str:
    if _UNPRIVILEGED and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permission bits cannot be tested")
    result = subprocess.run(
        [*_UNPRIVILEGED, sys.executable, "-c", _RO_WORKER, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def _chmod_tree(root: Path, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            mode = p.stat().st_mode
            p.chmod(mode | 0o200 if writable else mode & ~0o222)


@pytest.mark.parametrize("left", ["nothing", "an-incomplete-new", "only-new"])
def test_restore_from_a_read_only_folder(tmp_path, left):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    if left == "an-incomplete-new":  # a save killed while orbax was writing
        _save(tmp_path / "other", 2.0)
        (tmp_path / "other" / MANIFEST).unlink()
        os.rename(tmp_path / "other", _ckpt_files.sibling(path, "new"))
    elif left == "only-new":  # a save killed between the two renames of the swap
        os.rename(path, _ckpt_files.sibling(path, "new"))
    names = sorted(p.name for p in tmp_path.iterdir())
    _chmod_tree(tmp_path, writable=False)
    try:
        assert _run_unprivileged("restore", str(path)) == "value 1.0"
    finally:
        _chmod_tree(tmp_path, writable=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == names


def test_force_over_a_read_only_checkpoint_is_refused_before_anything_moves(tmp_path):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    _chmod_tree(path, writable=False)  # the checkpoint, not the folder that holds it
    try:
        out = _run_unprivileged("save", str(path))
    finally:
        _chmod_tree(path, writable=True)
    assert out.startswith("error PermissionError"), out
    assert "cannot be deleted" in out and "nothing was changed" in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert _restore(path) == 1.0


# ---- concurrent saves ----

_SAVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import jax.numpy as jnp
    import adam_jax

    path, value, go = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3])
    tx = adam_jax.adam(1e-2)
    params = {"w": jnp.full((4, 3), value, jnp.float32), "b": jnp.full((3,), value)}
    state = tx.init(params)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.01)
    for _ in range(4):
        adam_jax.save_checkpoint(path, params, state, force=True)
    print("saved", flush=True)
    """
)


def test_two_processes_saving_to_one_folder_are_serialised(tmp_path):
    path, go = tmp_path / "ckpt", tmp_path / "go"
    _save(path, 0.0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(path), str(v), str(go)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in (1.0, 2.0)
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        go.touch()
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0 and out.strip() == "saved", err[-3000:]
    go.unlink()
    assert _restore(path) in (1.0, 2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_save_waits_for_the_lock_of_another(tmp_path):
    path = tmp_path / "ckpt"
    _save(path, 1.0)
    with _ckpt_files.locked(path):
        proc = subprocess.Popen(
            [sys.executable, "-c", _RO_WORKER, "save", str(path)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        # the worker has started and imported everything; its save now waits for the lock
        assert proc.stdout.readline() == "saving\n"
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=5)  # a save of this size takes well under a second
        assert _restore(path) == 1.0
    out, _ = proc.communicate(timeout=300)
    assert out.strip().splitlines()[-1] == "value 2.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
