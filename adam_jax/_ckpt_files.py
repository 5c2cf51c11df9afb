"""The files of an adam_jax checkpoint: crash-safe replacement, content checksums, safe paths.

A checkpoint is a folder written by orbax (items ``params``, ``opt_state``, ``optimizer``) plus a
manifest, ``adam_jax_manifest.json``, written last: the SHA-256 of every file. Its presence marks
the folder as a complete adam_jax checkpoint.

Replacing a checkpoint never leaves a moment without one that can be restored::

    1. write the new checkpoint to  .NAME.adam_jax-new    (manifest last)
    2. rename NAME               to .NAME.adam_jax-old    (if NAME exists)
    3. rename .NAME.adam_jax-new to NAME
    4. delete .NAME.adam_jax-old

A process killed at any point leaves NAME complete, or NAME missing with a complete ``-new`` or
``-old`` beside it. :func:`recover` (run before every save and restore) finishes or rolls back
the swap: a complete ``-new`` is moved into place, else ``-old`` is moved back; leftovers of an
interrupted write are deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

MANIFEST = "adam_jax_manifest.json"
ITEMS = ("params", "opt_state", "optimizer")
_UNSUPPORTED_CHARACTERS = "[]\\"
_CHUNK = 1 << 20


def check_path(directory: Path, where: str) -> None:
    """``ValueError`` for a path orbax's storage layer cannot round-trip."""
    bad = sorted({c for c in str(directory) if c in _UNSUPPORTED_CHARACTERS})
    if bad:
        raise ValueError(
            f"{where}: checkpoint path {str(directory)!r} contains {' '.join(bad)}; checkpoints "
            f"cannot be written to or read from paths with the characters "
            f"{' '.join(_UNSUPPORTED_CHARACTERS)}. Choose another folder name."
        )


def sibling(directory: Path, kind: str) -> Path:
    return directory.with_name(f".{directory.name}.adam_jax-{kind}")


def is_complete(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


def recover(directory: Path) -> None:
    """Finish or roll back a replacement that a crash interrupted (see the module docstring)."""
    new, old = sibling(directory, "new"), sibling(directory, "old")
    if not directory.exists():
        if new.is_dir() and is_complete(new):
            os.rename(new, directory)
        elif old.is_dir():
            os.rename(old, directory)
    for leftover in (new, old):
        if leftover.exists():
            shutil.rmtree(leftover)


def check_replaceable(directory: Path, force: bool, where: str) -> None:
    """Refuse to write over anything but an adam_jax checkpoint, and over one without ``force``."""
    if not directory.exists() and not directory.is_symlink():
        return
    if directory.is_symlink() or not directory.is_dir():
        raise ValueError(f"{where}: {directory} exists and is not a checkpoint folder.")
    if not force:
        raise ValueError(
            f"{where}: checkpoint {directory} already exists; pass force=True to replace it."
        )
    if not (is_complete(directory) or (directory / "optimizer").is_dir()):
        raise ValueError(
            f"{where}: {directory} is not an adam_jax checkpoint (no {MANIFEST}); refusing to "
            "replace it with force=True. Choose another folder, or delete it yourself."
        )


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path) -> None:
    """Write the SHA-256 of every file, last, through a temporary file renamed into place."""
    digests = {p.relative_to(directory).as_posix(): _digest(p) for p in _files(directory)}
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


def verify(directory: Path, where: str) -> None:
    """``ValueError`` naming the first problem: a missing item, a link leading out of the
    checkpoint, a missing or altered file. Checkpoints without a manifest (written by adam_jax
    0.1) are checked for items and links only."""
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
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return
    try:
        recorded = json.loads(manifest.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{where}: {manifest} is damaged ({err}).") from None
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
