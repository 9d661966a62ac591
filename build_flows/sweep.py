"""Sweeps: every design point a task on a Dask cluster, its build folder cached in a shared folder.

A point (sweep_spec.DesignPoint) becomes the same `BuildRequest` a command line makes, and its cache
key is a hash of the build identity that request has (identity.BuildIdentity: network, variant,
board, weights hash, folding, budget) plus the step it stops after. A task takes a lock on its
folder, builds or continues it with `ensure_build` (every step's output is written atomically, so
a build cut off by a lost worker continues where it stopped) and writes the point's row to
`point_result.json` atomically, last: only a folder with that file and the point's key counts as
finished, so a re-submitted sweep skips exactly the finished points.

What can go wrong is reported per point, never dropped: a bnnflow error (the design does not fit,
a bad folding config) is the point's result; an unexpected exception is retried `retries` times,
then reported as failed; a point whose worker died is re-run by Dask on another worker (up to
distributed's `allowed-failures`), then reported as lost. `bnnflow benchmark` is a sweep too.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bnnflow.atomic import write_json
from bnnflow.errors import BnnflowError

from .sweep_archive import ARCHIVE, make_probe, run_remote, unpack
from .sweep_cluster import ClusterSpec, connect
from .sweep_spec import DesignPoint

RESULT_FILE = "point_result.json"
RESULT_VERSION = 5  # 4: benchmark rows keyed by the build identity; 5: any sweep point, keyed by its hash
FINISHED = ("done", "stopped")  # a row with a build behind it; "error", "failed", "lost" have none


def point_request(point: DesignPoint, folder: Path):
    """The BuildRequest of a point, built in `folder`."""
    from .identity import AUTO_FOLDING, BuildRequest

    if point.weights == "committed":
        from bnnflow.models.checkpoint import committed_checkpoint

        checkpoint = committed_checkpoint(point.model, point.variant)
    else:
        checkpoint = None if point.weights == "random" else Path(point.weights)
    folding, target_fps = None, None
    if point.folding == "auto":
        folding = Path(AUTO_FOLDING)
    elif point.folding.startswith("fps:"):
        target_fps = int(point.folding[4:])
    elif point.folding != "committed":
        folding = Path(point.folding)
    return BuildRequest(model=point.model, variant=point.variant, board=point.board, checkpoint=checkpoint,
                        out=Path(folder), folding=folding, target_fps=target_fps, seed=point.seed,
                        lut_max=point.lut_max, bram_max=point.bram_max, stop_after=point.stop_after)


def point_key(point: DesignPoint) -> str:
    """sha256 of what the point's build is (its BuildIdentity) and how far it goes."""
    from bnnflow.hw.boards import get_board

    from .build import folding_file, wanted_identity

    req = point_request(point, Path("."))
    board = get_board(point.board)
    identity = wanted_identity(req, board, folding_file(req, board, Path(".")))
    blob = json.dumps({"identity": identity.as_dict(), "stop_after": point.stop_after, "version": RESULT_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def folder_name(point: DesignPoint, key: str, hashed: bool = True) -> str:
    """MODEL-VARIANT-BOARD, with the key's first 12 hex digits where points of one network differ."""
    base = f"{point.model}-{point.variant}-{point.board}"
    return f"{base}-{key[:12]}" if hashed else base


def cached_row(folder: Path, key: str) -> dict | None:
    """The finished row `folder` holds for this key, else None."""
    try:
        saved = json.loads((Path(folder) / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("key") != key or not isinstance(saved.get("row"), dict):
        return None
    return saved["row"] if saved["row"].get("status") == "done" else None


def run_point(point: dict, folder: str, key: str, force: bool = False) -> dict:
    """One design point, in a worker: build (or continue) its folder to its stop step; its row.

    The lock keeps a point from being built twice at once (a worker thought lost may still run)."""
    from filelock import FileLock

    t0 = time.time()
    p, out = DesignPoint(**point), Path(folder)
    with FileLock(str(out.parent / f".{out.name}.lock")):
        row = None if force else cached_row(out, key)
        if row is not None:
            return {**row, "cached": True, "seconds": round(time.time() - t0, 1)}
        row = _build_point(p, out, force)
        row.update({"key": key, "cached": False, "seconds": round(time.time() - t0, 1)})
        if row["status"] == "done":
            write_json(out / RESULT_FILE, {"key": key, "row": row})
    return row


def _build_point(p: DesignPoint, out: Path, force: bool) -> dict:
    from rich.console import Console

    from . import flow
    from .benchmark import design_row, point_accuracy
    from .build import ensure_build
    from .identity import saved_identity

    req = point_request(p, out)
    row = {**identity_row(p), "accuracy": point_accuracy(req.checkpoint), "out": str(out),
           "checkpoint": str(req.checkpoint) if req.checkpoint else None}
    # a folder without a saved identity is one of ours cut off while exporting: start it again
    ours = out.is_dir() and saved_identity(flow.BuildState(out, strict=False).data) is None
    req = replace(req, force=force or ours)
    try:
        built, _, result = ensure_build(req, p.stop_after, Console(quiet=True), replace_other=True)
        done = flow.BuildState(built).done
        row.update(design_row(built, p))
        if p.stop_after in done:
            row["status"] = "done"
        else:  # a vendor tool is missing: the build stopped before the step the point asks for
            nxt = flow.STEPS[flow.STEP_NAMES.index(done[-1]) + 1] if done else flow.STEPS[0]
            row.update({"status": "stopped", "error": str(result["stopped"]) if result and result.get("stopped")
                        else f"The build stopped after {done[-1] if done else 'nothing'}: {nxt.name} needs "
                             f"{nxt.tool}."})
    except BnnflowError as exc:
        row.update({"status": "error", "error": str(exc)})
    return row


def identity_row(p: DesignPoint) -> dict:
    from bnnflow.catalog import MODEL_TITLES

    return {"model": p.model, "title": MODEL_TITLES[p.model], "variant": p.variant, "board": p.board,
            "folding": p.folding, "stop_after": p.stop_after, "weights": p.weights, "point": p.as_dict()}


def run_sweep(points: list[DesignPoint], root: Path, spec: ClusterSpec, *, hashed: bool = True, force: bool = False,
              retries: int = 1, priority: Callable[[DesignPoint], float] | None = None,
              on_row: Callable[[dict], None] | None = None, on_counts: Callable[[dict], None] | None = None,
              task: Callable = run_point, shared: bool | None = None) -> dict:
    """Run every point (cached ones are read, not submitted); the rows in point order and the wall time.

    on_row(row) as each point ends; on_counts({"done", "cached", "running", "queued", "failed", "total"})
    whenever they change. `task` is run_point; tests swap in stand-ins for its failure modes.
    shared: False returns every folder as an archive (sweep_archive.py); None: where a worker cannot see `root`."""
    root = Path(root).resolve()
    keys = [point_key(p) for p in points]
    folders = [root / folder_name(p, k, hashed) for p, k in zip(points, keys)]
    return run_points(points, keys, folders, spec, describe=identity_row, task=task, force=force, retries=retries,
                      priority=priority, on_row=on_row, on_counts=on_counts, shared=shared)


def run_points(points: list, keys: list[str], folders: list[Path], spec: ClusterSpec, *, describe: Callable,
               task: Callable, force: bool = False, retries: int = 1, priority: Callable | None = None,
               on_row: Callable | None = None, on_counts: Callable | None = None, shared: bool | None = None) -> dict:
    """run_sweep for any kind of point: design points here, training points (sweep_train.py).

    describe(point): the identity columns of its row (a failed point's row has nothing else)."""
    root = folders[0].parent if folders else Path(".")
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows: list[dict | None] = [None] * len(points)
    for i, (k, f) in enumerate(zip(keys, folders)):
        cached = None if force else cached_row(f, k)
        if cached is not None:
            rows[i] = {**cached, "cached": True, "seconds": 0.0}
    todo = [i for i in range(len(points)) if rows[i] is None]
    if priority is not None:
        todo.sort(key=lambda i: -priority(points[i]))
    tracker = _Tracker(rows, on_row, on_counts)
    tracker.report(running=0)
    if spec.in_process:
        for i in todo:
            tracker.report(running=1)
            for _ in range(retries + 1):  # as Dask retries a task that raised
                try:
                    row = task(points[i].as_dict(), str(folders[i]), keys[i], force)
                    break
                except Exception as exc:  # noqa: BLE001 - reported as the point's result, like a worker's
                    row = _failed_row(describe(points[i]), folders[i], keys[i], "failed", exc)
            tracker.finish(i, row)
    elif todo:
        probe, token = (None, None) if shared is False else make_probe(root)
        try:
            with connect(spec) as client:
                _run_on(client, todo, points, folders, keys, force, retries, task, tracker, describe, (probe, token))
        finally:
            if probe is not None:
                probe.unlink(missing_ok=True)
    return {"rows": rows, "wall_seconds": round(time.time() - t0, 1)}


def _run_on(client, todo, points, folders, keys, force, retries, task, tracker, describe, probe) -> None:
    from distributed import KilledWorker

    where = (str(probe[0]) if probe[0] else None, probe[1])
    futures = {i: client.submit(run_remote, task, points[i].as_dict(), str(folders[i]), keys[i], force, *where,
                                pure=False, retries=retries, priority=len(todo) - n,
                                key=f"bnnflow-point-{keys[i][:16]}-{n}")
               for n, i in enumerate(todo)}
    while futures:
        for i, fut in list(futures.items()):
            if fut.status == "finished":
                tracker.finish(i, _received(fut.result(), describe(points[i]), folders[i], keys[i]))
            # ("lost": a finished result died with its worker, and Dask computes it again)
            elif fut.status in ("error", "cancelled"):
                exc = fut.exception() if fut.status == "error" else None
                lost = fut.status == "cancelled" or isinstance(exc, KilledWorker)
                tracker.finish(i, _failed_row(describe(points[i]), folders[i], keys[i], "lost" if lost else "failed",
                                              exc or RuntimeError(f"the scheduler reports the task {fut.status}")))
            else:
                continue
            fut.release()  # an archive's bytes need not stay in the cluster's memory
            del futures[i]
        if futures:
            if client.status not in ("running", "connecting"):  # the scheduler went away: say which points
                for i in list(futures):
                    tracker.finish(i, _failed_row(describe(points[i]), folders[i], keys[i], "lost",
                                                  RuntimeError(f"the Dask client is {client.status}")))
                break
            running = _running(client, {futures[i].key for i in futures})
            tracker.report(running=running)
            time.sleep(0.25)


def _received(row: dict, base: dict, folder: Path, key: str) -> dict:
    """A worker's row; a folder it sent as an archive unpacked into place first."""
    data = row.pop(ARCHIVE, None)
    if data is None:
        return row
    try:
        unpack(data, folder)
    except BnnflowError as exc:
        return _failed_row(base, folder, key, "failed", exc)
    return row


def _running(client, keys: set) -> int:
    try:
        processing = client.processing()
    except Exception:  # noqa: BLE001 - progress only
        return 0
    return sum(1 for tasks in processing.values() for k in tasks if k in keys)


def _failed_row(base: dict, folder: Path, key: str, status: str, exc: BaseException) -> dict:
    message = " ".join(f"{type(exc).__name__}: {exc}".split())
    return {**base, "accuracy": None, "out": str(folder), "key": key, "status": status, "error": message,
            "cached": False, "seconds": 0.0}


class _Tracker:
    """Rows as they arrive, and the counts the progress display shows."""

    def __init__(self, rows: list, on_row, on_counts):
        self.rows, self.on_row, self.on_counts = rows, on_row, on_counts
        self.cached = sum(r is not None for r in rows)
        self.last, self.running = None, 0

    def finish(self, i: int, row: dict) -> None:
        self.rows[i] = row
        if self.on_row:
            self.on_row(row)
        self.report(running=max(self.running - 1, 0))  # until the next look at the scheduler

    def report(self, running: int) -> None:
        ended = [r for r in self.rows if r is not None]
        failed = sum(r.get("status") in ("failed", "lost") for r in ended)
        self.running = running
        counts = {"total": len(self.rows), "done": len(ended) - failed, "cached": self.cached, "failed": failed,
                  "running": running, "queued": len(self.rows) - len(ended) - running}
        if counts != self.last and self.on_counts:
            self.on_counts(counts)
        self.last = counts
