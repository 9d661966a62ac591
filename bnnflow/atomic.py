"""Atomic file and folder writes: a crash never leaves a half-written checkpoint or build."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# mkstemp/mkdtemp create 0600 files and 0700 folders whatever the umask. Unless the block set a mode of
# its own (a copied executable), what they become gets the replaced file's mode, or the one a plain
# open()/mkdir() would give, so that a checkpoint, build or package written here (as root in the Docker
# image, say) stays readable to whom it would be otherwise.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _settle_mode(tmp: Path, target: Path, made: int, plain: int) -> None:
    if tmp.is_symlink() or tmp.stat().st_mode & 0o7777 != made:
        return
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = plain & ~_UMASK
    os.chmod(tmp, mode)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _settle_mode(tmp_path, target, 0o600, 0o666)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | os.PathLike, obj) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `target`; swap it in for `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        _settle_mode(tmp, target, 0o700, 0o777)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
