"""Training sweeps: every training point a `bnnflow train` run in its own run folder, as a Dask task.

They go the design points' way (sweep.run_points): a point's folder is named by a hash of the point
(its recipe, engine and data), `point_result.json` is written last, atomically, so only a finished
run counts as cached, and a re-submitted sweep skips it. A task runs `python -m bnnflow train` in a
subprocess (a crash or torch's global state stays out of the worker); a run cut off by a lost worker
is continued with --resume from its last.pt, a folder without one is started again. A bnnflow
error (exit 2) is the point's result; any other failure raises, so Dask retries and then reports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from bnnflow.atomic import write_json, write_text
from bnnflow.cores import usable_cores
from bnnflow.models.runs_table import shown_value

from .sweep import RESULT_FILE, cached_row, run_points
from .sweep_cluster import ClusterSpec
from .sweep_train_spec import TrainPoint

RESULT_VERSION = 1
LOG_FILE = "train.log"  # the run's output, written into the run folder once train exits
BAD = ("failed", "lost", "error")  # a training point with no finished run


def train_key(point: TrainPoint) -> str:
    blob = json.dumps({"point": point.as_dict(), "version": RESULT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def train_folder_name(point: TrainPoint, key: str) -> str:
    return f"{point.model}-{point.variant}-{point.optimizer}-s{point.seed}-{key[:12]}"


def describe(p: TrainPoint) -> dict:
    """The identity columns of a training point's row."""
    return {"kind": "train", "model": p.model, "variant": p.variant, "title": p.model, "label": p.label,
            "optimizer": p.optimizer, "lr": p.lr, "seed": p.seed, "epochs": p.epochs, "batch_size": p.batch_size,
            "point": p.as_dict()}


def run_train_point(point: dict, folder: str, key: str, force: bool = False) -> dict:
    """One training point, in a worker: train (or continue) its run folder; its row."""
    from filelock import FileLock

    t0 = time.time()
    p, out = TrainPoint(**point), Path(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{out.name}.lock")):
        row = None if force else cached_row(out, key)
        if row is not None:
            return {**row, "cached": True, "seconds": round(time.time() - t0, 1)}
        args = [*p.train_args(), "--out", str(out), "--no-progress", *_threads()]
        if not force and (out / "last.pt").is_file():
            args.append("--resume")
        elif out.exists():  # ours (named by the point's hash), cut off before its first epoch, or --force
            shutil.rmtree(out)
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env["COLUMNS"] = "160"  # train.log's lines unwrapped (rich wraps at 80 without a terminal)
        proc = subprocess.run([sys.executable, "-m", "bnnflow", "train", *args], capture_output=True, text=True,
                              env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_worker())
        if out.is_dir():
            write_text(out / LOG_FILE, proc.stdout + proc.stderr)
        row = {**describe(p), "out": str(out), "key": key, "cached": False}
        last = next((ln for ln in reversed(proc.stderr.splitlines()) if ln.strip()), "")
        if proc.returncode == 2 and last.startswith("bnnflow: error: "):
            row.update(status="error", error=last[len("bnnflow: error: "):])
        elif proc.returncode != 0:  # a crash: raised, so Dask retries it (the run resumes) and then reports it
            raise RuntimeError(f"bnnflow train exited with code {proc.returncode}: {last.strip() or 'no output'}")
        else:
            row.update(run_figures(out), status="done", error=None)
        row["seconds"] = round(time.time() - t0, 1)
        if row["status"] == "done":
            write_json(out / RESULT_FILE, {"key": key, "row": row})
    return row


def _die_with_worker():
    """The child's set-up on Linux: SIGTERM when the worker dies (killed, out of memory), so a run Dask
    starts again elsewhere never has an orphan still writing its folder (last.pt is written atomically)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)  # looked up before the fork: no imports in the child
    return lambda: libc.prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


def _threads() -> list[str]:
    """--threads: this machine's cores shared by the Dask workers on it (torch would take them all each)."""
    try:
        from distributed import get_client, get_worker

        host = get_worker().address.rsplit(":", 1)[0]
    except (ImportError, ValueError):
        return []  # not in a worker (--jobs 1): train's default, every core
    try:
        workers = get_client().scheduler_info()["workers"]
        on_host = max(1, sum(1 for a in workers if a.rsplit(":", 1)[0] == host))
    except Exception:  # noqa: BLE001 - a guess at threads only
        on_host = 1
    cores = usable_cores()
    return ["--threads", str(max(1, cores // on_host))]


def run_figures(out: Path) -> dict:
    """What the results table shows, from the finished run's run.json and log.json."""
    run = json.loads((out / "run.json").read_text())
    try:
        log = json.loads((out / "log.json").read_text())
    except (OSError, ValueError):
        log = []
    return {"epochs_done": run.get("epochs_done"), "best_epoch": run.get("best_epoch"),
            "val_top1": run.get("best_val_top1"), "test_top1": run.get("best_test_top1"),
            "train_seconds": round(sum(r.get("seconds") or 0 for r in log), 1), "device": run.get("device"),
            "checkpoint": str(out / "best.pt")}


def run_train_sweep(points: list[TrainPoint], root: Path, spec: ClusterSpec, *, force: bool = False,
                    retries: int = 1, on_row: Callable | None = None, on_counts: Callable | None = None,
                    task: Callable = run_train_point, shared: bool | None = None) -> dict:
    """Every training point (finished ones read, not submitted): the rows in point order and the wall time."""
    root = Path(root).resolve()
    keys = [train_key(p) for p in points]
    folders = [root / train_folder_name(p, k) for p, k in zip(points, keys)]
    return run_points(points, keys, folders, spec, describe=describe, task=task, force=force, retries=retries,
                      on_row=on_row, on_counts=on_counts, shared=shared)


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.1f}%"


def train_table(rows: list[dict]) -> str:
    """The markdown results table: one line per point, whatever its status."""
    lines = ["| Point | Epochs | Best epoch | Val top-1 | Test top-1 | Train time | Status |",
             "|---|---:|---:|---:|---:|---:|---|"]
    # every key with its value, defaults included (a point's stored identity leaves LATER_KEYS out at default)
    points = [asdict(TrainPoint(**r["point"])) if r.get("point") else {} for r in rows]
    # name each point by the keys that tell the sweep's points apart
    varying = [k for k in TrainPoint.__dataclass_fields__ if k not in ("model", "variant")
               and len({json.dumps(p.get(k)) for p in points}) > 1]
    for r, p in zip(rows, points):
        label = f"{r['model']}/{r['variant']}" + (
            f" ({', '.join(f'{k} {shown_value(k, p.get(k))}' for k in varying)})"
            if varying else "")
        done = r.get("status") == "done"
        epochs = f"{r.get('epochs_done')}/{r['epochs']}" if done else f"-/{r['epochs']}"
        status = ("cached" if r.get("cached") else "done") if done else \
            f"{r.get('status')}: {(r.get('error') or '').replace('|', '/')}"
        secs = f"{r['train_seconds']:.0f} s" if done and r.get("train_seconds") is not None else ""
        lines.append(f"| {label} | {epochs} | {r.get('best_epoch') or ''} | {_pct(r.get('val_top1'))} | "
                     f"{_pct(r.get('test_top1'))} | {secs} | {status} |")
    return "\n".join(lines)
