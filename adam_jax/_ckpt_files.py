"""The files of an adam_jax checkpoint: crash-safe replacement, content checksums, safe paths.

A checkpoint is a folder written by orbax (items ``params``, ``opt_state``, ``optimizer``) plus a
manifest, ``adam_jax_manifest.json``, written last: the SHA-256 of every file. Its presence marks
the folder as a complete adam_jax checkpoint, and it lists exactly the checkpoint's files: a
restore refuses a checkpoint without one, a file it does not list, a listed file that is missing
or altered, and an entry that would lead out of the folder (checked before any file is opened).

Replacing a checkpoint never leaves a moment without one that can be restored::

    0. take the lock file                  .NAME.adam_jax-lock   (one save at a time)
    1. write the new checkpoint to          .NAME.adam_jax-new    (manifest last)
    2. rename NAME               to         .NAME.adam_jax-old    (if NAME exists)
    3. rename .NAME.adam_jax-new to NAME
    4. delete .NAME.adam_jax-old, then the lock file

A process killed at any point leaves NAME complete, or NAME missing with a complete ``-new`` or
``-old`` beside it. Under the lock, :func:`recover` (run before every save) finishes or rolls back
the swap: a complete ``-new`` is moved into place, else ``-old`` is moved back; leftovers of an
interrupted write are deleted. A restore writes nothing: :func:`to_read` picks the folder to read
(NAME, else the complete ``-new``, else ``-old``) without moving it. A restore that overlaps steps
2-4 of a save can still fail (its files move away); it never disturbs the save.

For a NAME too long to carry these prefixes and suffixes (and orbax's own temporary suffix) within
a file system's 255 bytes, the siblings are named after a hash of NAME: ``.HASH.adam_jax-new``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

MANIFEST = "adam_jax_manifest.json"
ITEMS = ("params", "opt_state", "optimizer")
_UNSUPPORTED_CHARACTERS = "[]\\"
_CHUNK = 1 << 20
_NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs, tmpfs, NFS, ...)
_ORBAX_SUFFIX = 48  # room for what orbax appends while writing: ".orbax-checkpoint-tmp-<time>"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_path(directory: Path, where: str) -> None:
    """``ValueError`` for a path orbax's storage layer cannot round-trip, or a file system hold."""
    bad = sorted({c for c in str(directory) if c in _UNSUPPORTED_CHARACTERS})
    if bad:
        raise ValueError(
            f"{where}: checkpoint path {str(directory)!r} contains {' '.join(bad)}; checkpoints "
            f"cannot be written to or read from paths with the characters "
            f"{' '.join(_UNSUPPORTED_CHARACTERS)}. Choose another folder name."
        )
    size = len(os.fsencode(directory.name))
    if size > _NAME_MAX:
        raise ValueError(
            f"{where}: the checkpoint folder's name is {size} bytes long; file systems allow at "
            f"most {_NAME_MAX}. Choose a shorter name."
        )


def sibling(directory: Path, kind: str) -> Path:
    """``.NAME.adam_jax-KIND`` beside ``directory``; ``.HASH.adam_jax-KIND`` for a long NAME."""
    name = f".{directory.name}.adam_jax-{kind}"
    if len(os.fsencode(name)) + _ORBAX_SUFFIX > _NAME_MAX:
        digest = hashlib.sha256(os.fsencode(directory.name)).hexdigest()[:32]
        name = f".{digest}.adam_jax-{kind}"
    return directory.with_name(name)


def is_complete(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


@contextlib.contextmanager
def locked(directory: Path, hold: bool = True) -> Iterator[None]:
    """Hold ``.NAME.adam_jax-lock`` (``fcntl.flock``, waiting for another holder); delete it on
    leaving. ``hold=False`` does nothing (the processes other than 0 of a multi-process run).

    The kernel releases the lock of a process that dies, so a lock file left by a killed save
    stops no one. Deleting the file on leaving is safe: a waiter that then gets the lock on the
    deleted file sees that the path no longer leads to it, and takes the lock again."""
    if not hold:
        yield
        return
    path = sibling(directory, "lock")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            raise PermissionError(
                f"save_checkpoint: cannot write in {directory.parent}, the folder that holds the "
                "checkpoint; nothing was changed."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:  # deleted by the holder we waited for
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def recover(directory: Path) -> None:
    """Finish or roll back a replacement that a crash interrupted (see the module docstring).
    Call it holding :func:`locked`."""
    new, old = sibling(directory, "new"), sibling(directory, "old")
    if not directory.exists():
        if new.is_dir() and is_complete(new):
            os.rename(new, directory)
        elif old.is_dir():
            os.rename(old, directory)
    for leftover in (new, old):
        if leftover.exists():
            shutil.rmtree(leftover)


def to_read(directory: Path) -> Path:
    """The folder a restore reads, moving nothing: ``directory``, or, where an interrupted
    replacement left none, the complete ``-new`` beside it, else the ``-old``."""
    if directory.exists():
        return directory
    new, old = sibling(directory, "new"), sibling(directory, "old")
    if new.is_dir() and not new.is_symlink() and is_complete(new):
        return new
    if old.is_dir() and not old.is_symlink():
        return old
    return directory


def check_replaceable(directory: Path, force: bool, where: str) -> None:
    """Refuse to write over anything but an adam_jax checkpoint, over one without ``force``, and
    over one that could not be deleted once replaced (checked before anything is moved)."""
    if directory.is_symlink():
        raise ValueError(
            f"{where}: {directory} is a symbolic link to {Path(os.readlink(directory))}; a "
            "checkpoint is replaced by renaming folders, which would replace the link, not what it "
            f"leads to. Pass the real path, {directory.resolve()} (restore_checkpoint follows links)."
        )
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ValueError(f"{where}: {directory} exists and is a file, not a checkpoint folder.")
    if not force:
        raise ValueError(
            f"{where}: checkpoint {directory} already exists; pass force=True to replace it."
        )
    if not (is_complete(directory) or (directory / "optimizer").is_dir()):
        raise ValueError(
            f"{where}: {directory} is not an adam_jax checkpoint (no {MANIFEST}); refusing to "
            "replace it with force=True. Choose another folder, or delete it yourself."
        )
    for folder, _, _ in os.walk(directory):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(
                f"{where}: the checkpoint {directory} cannot be deleted once replaced: its folder "
                f"{folder} is read-only; nothing was changed. Make it writable (chmod -R u+w "
                f"{directory}), or save to another folder."
            )


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _files(directory: Path) -> list[str]:
    """Every entry under ``directory`` that is not a folder (links to folders included), as
    relative POSIX paths, the manifest left out; links are not followed."""
    found = []
    for folder, dirs, files in os.walk(directory):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            found.append(Path(folder, name).relative_to(directory).as_posix())
    return sorted(set(found) - {MANIFEST})


def write_manifest(directory: Path) -> None:
    """Write the SHA-256 of every file, last, through a temporary file renamed into place."""
    digests = {name: _digest(directory / name) for name in _files(directory)}
    tmp = directory / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"format": 1, "sha256": digests}, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, directory / MANIFEST)


def swap_into_place(new: Path, directory: Path) -> None:
    """Steps 2-4 of the module docstring."""
    old = sibling(directory, "old")
    if directory.exists():
        os.rename(directory, old)
    os.rename(new, directory)
    if old.exists():
        shutil.rmtree(old)


def _read_manifest(directory: Path, where: str) -> dict[str, str]:
    """``{relative path: SHA-256}`` from the manifest, every entry checked to name a place inside
    ``directory`` (nothing but the manifest is opened)."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise ValueError(
            f"{where}: checkpoint {directory} has no {MANIFEST}, so its files cannot be checked: "
            "it was written by adam_jax 0.1, or the manifest was deleted. Checkpoints without a "
            "manifest are no longer supported: restore it with adam_jax 0.3 and save it again "
            "there, which writes the manifest."
        )
    damaged = f"{where}: {manifest} is damaged"
    try:
        data = json.loads(manifest.read_bytes())
    except ValueError as err:  # not JSON, or not UTF-8
        raise ValueError(f"{damaged} ({err}).") from None
    if not isinstance(data, dict) or data.get("format") != 1:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f'{damaged}: expected {{"format": 1, ...}}, found format {found!r}.')
    recorded = data.get("sha256")
    if not isinstance(recorded, dict):
        raise ValueError(
            f"{damaged}: 'sha256' should map file names to SHA-256 digests, found "
            f"{type(recorded).__name__}."
        )
    root = directory.resolve()
    for name, digest in sorted(recorded.items()):
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ValueError(
                f"{damaged}: entry {name!r} has {digest!r}, not a SHA-256 digest (64 hex digits)."
            )
        if "\0" in name or any(part in ("", ".", "..") for part in name.split("/")):
            raise ValueError(
                f"{damaged}: entry {name!r} is not a plain relative path inside the checkpoint; "
                "refusing to read it."
            )
        target = (directory / name).resolve()
        if root not in target.parents:
            raise ValueError(
                f"{damaged}: entry {name!r} leads to {target}, outside the checkpoint "
                f"{directory}; refusing to read it."
            )
    return recorded


def verify(directory: Path, where: str) -> None:
    """``ValueError`` naming the first problem: a missing item, a link leading out of the
    checkpoint, no manifest or a damaged one, a file the manifest does not list, a listed file
    that is missing or altered."""
    if not directory.is_dir():
        raise ValueError(f"{where}: no checkpoint folder at {directory}.")
    root = directory.resolve()
    for path in [directory, *directory.rglob("*")]:
        if path.is_symlink():
            target = path.resolve()
            if target != root and root not in target.parents:
                raise ValueError(
                    f"{where}: {path} is a link to {target}, outside the checkpoint {directory}; "
                    "refusing to read it."
                )
    for item in ITEMS:
        if not (directory / item).is_dir():
            raise ValueError(
                f"{where}: checkpoint {directory} has no '{item}' item; it is incomplete or was "
                "not written by adam_jax.save_checkpoint."
            )
    recorded = _read_manifest(directory, where)
    unlisted = sorted(set(_files(directory)) - recorded.keys())
    if unlisted:
        raise ValueError(
            f"{where}: file {unlisted[0]} in {directory} is not listed in its manifest "
            f"({len(unlisted)} such file(s)): the checkpoint was changed after it was saved."
        )
    for name, digest in sorted(recorded.items()):
        path = directory / name
        item = name.split("/", 1)[0]
        if not path.is_file():
            raise ValueError(f"{where}: file {name} of item '{item}' is missing from {directory}.")
        if _digest(path) != digest:
            raise ValueError(
                f"{where}: file {name} of item '{item}' in {directory} does not match the "
                "checksum recorded when it was saved: the checkpoint is damaged."
            )
