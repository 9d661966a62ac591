"""Sweeps whose workers do not share the output folder: each point's folder comes back as an archive.

The client writes a probe file with a random token into the sweep's folder; a task whose worker
does not see that token at that path (another machine, or the same path on another disk) works in
a private scratch folder ($BNNFLOW_SWEEP_SCRATCH, else TMPDIR/bnnflow-sweep-UID), packs the finished
folder into a gzipped tar that travels back with its row, and deletes its copy. The client unpacks
it next to the folder's final place and renames it there, so the folder appears whole or not at
all. A point cut off mid-way is continued from the scratch folder when it runs on that machine again.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path

from bnnflow.atomic import write_json
from bnnflow.errors import BnnflowError

PROBE_PREFIX = ".bnnflow-probe-"
ARCHIVE = "archive"  # the row's key that carries the packed folder
PACKED = ("done", "stopped")  # rows with a folder worth returning (= sweep.FINISHED)


def make_probe(root: Path) -> tuple[Path, str]:
    """A probe file in `root` with a fresh token: (its path, the token)."""
    token = uuid.uuid4().hex
    probe = Path(root) / f"{PROBE_PREFIX}{token}"
    probe.write_text(token)
    return probe, token


def sees(probe: str | None, token: str | None) -> bool:
    """Does this process see the client's probe? (no probe: archives were asked for)"""
    if probe is None:
        return False
    try:
        return Path(probe).read_text() == token
    except OSError:
        return False


def scratch_root() -> Path:
    env = os.environ.get("BNNFLOW_SWEEP_SCRATCH")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"bnnflow-sweep-{os.getuid()}"


def run_remote(task, point: dict, folder: str, key: str, force: bool, probe: str | None, token: str | None) -> dict:
    """`task` on a worker: in `folder` when the worker shares it, else in scratch, its folder packed into the row."""
    if sees(probe, token):
        return task(point, folder, key, force)
    work = scratch_root() / Path(folder).name
    work.parent.mkdir(parents=True, exist_ok=True)
    row = task(point, str(work), key, force)
    row["out"] = folder  # where the client will have it
    if row.get("status") in PACKED and work.is_dir():
        _point_result_out(work, folder)
        row[ARCHIVE] = pack(work)
        shutil.rmtree(work, ignore_errors=True)
    return row


def _point_result_out(work: Path, folder: str) -> None:
    """The saved row names the client's folder, as a cached read of it will."""
    from .sweep import RESULT_FILE

    path = work / RESULT_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(saved, dict) and isinstance(saved.get("row"), dict):
        saved["row"]["out"] = folder
        write_json(path, saved)


def pack(folder: Path) -> bytes:
    """`folder` as a gzipped tar whose one top-level entry is the folder's name."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=3) as tar:
        tar.add(str(folder), arcname=folder.name)
    return buf.getvalue()


def unpack(data: bytes, folder: Path) -> None:
    """Put the archive's folder at `folder` atomically: unpacked beside it, then renamed into place
    (an older folder there, e.g. an earlier partial build, is replaced)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.unpack-", dir=folder.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")  # no absolute paths, links or '..' out of tmp
        src = tmp / folder.name
        if not src.is_dir():
            raise BnnflowError(f"The archive returned for {folder} holds no folder {folder.name}: the worker "
                               "packed something else.")
        old = None
        if folder.exists():
            old = tmp / ".old"
            folder.rename(old)
        src.rename(folder)
    except (OSError, tarfile.TarError) as exc:
        why = " ".join(str(exc).split()).rstrip(".")
        raise BnnflowError(f"Cannot unpack the archive returned for {folder} ({why}): check the free space and "
                           "permissions there.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
