"""Atomic file writes: every output appears whole or not at all (a crash never leaves half a file)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (with the permissions a
    normally created file would get under the umask), on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def replace_dir(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Move a finished ``staging`` directory to ``target``, replacing an existing one by renames only
    (the old copy is moved aside first and removed last, so ``target`` is never half-written).

    Every directory and file in it first gets the permissions the umask gives a normally created one
    (:func:`apply_umask`), whatever made them."""
    import shutil

    staging, target = Path(staging), Path(target)
    apply_umask(staging)  # mkdtemp makes 0700 and safetensors writes 0600: colleagues could not read it
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
    return target


def apply_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (and, for a directory, everything under it) the permissions a newly created file
    (``0o666``) or directory (``0o777``) gets under the current umask.

    ``tempfile.mkdtemp`` creates 0700 and ``mkstemp`` / safetensors' ``save_file`` 0600 regardless of the
    umask; outputs on a shared cluster must be readable as the user's umask says (022: 0755 / 0644).
    """
    umask = os.umask(0)
    os.umask(umask)
    root = Path(path)
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for p in paths:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def check_output(
    path: str | os.PathLike[str], option: str, *, kind: str = "file", overwrite: bool = True
) -> Path:
    """Refuse an output path that cannot be written, before any work: raise :class:`OutputError` naming
    ``option`` when a part of the path is a file, the path is a folder where a file is expected (or the
    reverse), the nearest existing folder is not writable, or (``overwrite=False``) it already exists.
    Creates nothing. ``kind`` is ``"file"`` or ``"dir"``."""
    from .errors import OutputError

    path = Path(path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{option} {path}: {ancestor} is a file, not a folder (choose another {option})")
    if path.exists():
        if kind == "file" and path.is_dir():
            raise OutputError(f"{option} {path}: is a folder; give a file name (choose another {option})")
        if kind == "dir" and not path.is_dir():
            raise OutputError(f"{option} {path}: is a file, not a folder (choose another {option})")
        if not overwrite:
            raise OutputError(
                f"{option} {path}: already exists "
                f"(pass --overwrite to replace it, or choose another {option})"
            )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: {ancestor} is not writable (choose another {option})")
    return path


def check_input(path: str | os.PathLike[str], option: str, *, kind: str = "file") -> Path:
    """Refuse a missing input, a folder where a file is expected (or the reverse) or an empty file before
    any work: raise :class:`InputError` naming ``option`` and the path. ``kind``: ``"file"`` or ``"dir"``."""
    from .errors import InputError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{option} {path}: not found (check the path)")
    if kind == "file" and path.is_dir():
        raise InputError(f"{option} {path}: is a folder; expected a file")
    if kind == "dir" and not path.is_dir():
        raise InputError(f"{option} {path}: is a file; expected a folder")
    if kind == "file" and path.stat().st_size == 0:
        raise InputError(f"{option} {path}: the file is empty (0 bytes); re-create or re-download it")
    return path


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 24) -> str:
    """The sha256 of a file, read in ``chunk``-byte blocks (checkpoint provenance, the embedded model's card)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
