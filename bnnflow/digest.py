"""sha256 of files and bytes: the one way bnnflow names weights, folding configs, package files and data."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def bytes_sha256(data) -> str:
    """sha256 of a bytes-like object (e.g. a contiguous numpy array's buffer)."""
    return hashlib.sha256(data).hexdigest()
