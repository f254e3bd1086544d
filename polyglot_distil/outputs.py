"""Write outputs atomically: to a temporary path beside the target, renamed into place at the end.

A failed or interrupted command therefore never leaves a partial file or folder behind, and an
existing output is only replaced when the user asked for it (`--overwrite`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from polyglot_distil.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give a folder from `mkdtemp` (0700) or a file from `mkstemp` (0600), and what it holds, the
    permissions any file the user writes gets: a colleague can read a trimmed model."""
    mask = _umask()
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if item.is_symlink():
            continue
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def check_writable(target: str | os.PathLike, overwrite: bool, kind: str = "any") -> Path:
    """Fail early, before any work, if `target` exists and may not be replaced (`kind` "file": an
    output file, which never replaces a folder)."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists; pass --overwrite to replace it")
    if kind == "file" and target.is_dir():
        raise UserError(f"{target} is a folder; --overwrite replaces a file of the same kind only: give a file path")
    parent = target.parent if str(target.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise UserError(f"cannot write {target}: {parent} is not a folder")
    return target


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path; on success it is renamed to `target`, on error removed."""
    target = check_writable(target, overwrite)
    if target.is_dir():
        raise UserError(f"{target} is a folder; --overwrite replaces a file of the same kind only: give a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        follow_umask(tmp)
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `target`, on error it is removed."""
    target = check_writable(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        follow_umask(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old) if target.is_dir() else target.unlink()
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
