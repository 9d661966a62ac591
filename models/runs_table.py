"""`bnnflow runs`: the recipe table from logged training runs (README's recipe table).

One row per run folder: what differs from the default recipe, epochs done of those planned,
CPU-hours (the CPU time of the logged epochs' training steps, or for epochs logged before that
column their wall seconds x torch threads, plus a teacher's labelling), and the top-1 of the epoch
best.pt holds, selected on the held-out validation split, with its test top-1 beside it.
Test top-1 is reported, never used to choose.  The last column is issue 9's flattening test: how
many points the best validation top-1 gained over the last 15 % of the logged epochs (a finished
run has flattened under 0.3).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bnnflow.errors import BnnflowError
from bnnflow.outputs import OutCheck

DEFAULT_GLOB = "models/runs/*"


def add_runs_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "runs", help="table of training runs: recipe, epochs, CPU-hours, validation and test top-1, late gain",
        description="Reads run folders written by 'bnnflow train' (log.json, run.json) and prints one markdown "
                    "row per run: the recipe options that differ from the defaults, epochs, CPU-hours and the "
                    "top-1 of the checkpoint selected on the validation split, and how many points the best "
                    "validation top-1 gained over the last 15 % of the epochs (under 0.3 on a finished run: "
                    "its curve has flattened).")
    p.add_argument("folders", nargs="*", type=Path, help=f"run folders; default: {DEFAULT_GLOB}")
    p.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    p.set_defaults(check_outputs=OutCheck("runs"))
    return p


def _recipe_text(config: dict) -> str:
    from .train_config import RECIPE_DEFAULTS

    changed = [f"{k}={shown_value(k, v)}" for k, v in config.items()
               if k in RECIPE_DEFAULTS and k not in ("variant", "epochs") and v is not None
               and v != RECIPE_DEFAULTS[k] and not (k == "lr" and v in (2e-3, 0.1))]
    return ", ".join(changed) or "plain (Adam 2e-3, cosine, crop+flip)"


def shown_value(key: str, value):
    """A teacher checkpoint relative to this folder where it lies below it (sweeps store absolute paths)."""
    if key == "teacher" and value:
        path = Path(value)
        return path.relative_to(Path.cwd()) if path.is_absolute() and path.is_relative_to(Path.cwd()) else path
    return value


def run_row(folder: Path) -> dict:
    from bnnflow.model_ref import network_name

    from .run_folder import late_gain, selected_row

    log, info = folder / "log.json", folder / "run.json"
    if not folder.is_dir():
        raise BnnflowError(f"{folder} does not exist or is not a folder: pass the folders of 'bnnflow train' runs.")
    if not log.is_file() or not info.is_file():
        raise BnnflowError(f"{folder} is not a run folder of 'bnnflow train' (no log.json and run.json).")
    try:
        history = json.loads(log.read_text())
        run = json.loads(info.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BnnflowError(f"The logs in {folder} are damaged (not JSON): re-run or resume the run.") from None
    if not history:
        raise BnnflowError(f"The run in {folder} has no finished epoch yet.")
    cfg = run["config"]
    threads = run.get("threads") or 2
    best = selected_row(history)
    # in the order first used; +preciseBN: batch norm re-estimated before evaluating (precise_bn.py)
    engines = list(dict.fromkeys(r.get("engine", "brevitas") + ("+preciseBN" if r.get("bn_images") else "")
                                 for r in history))
    return {"run": folder.name, "model": network_name(cfg["model"], cfg["variant"]), "recipe": _recipe_text(cfg),
            "engine": "+".join(engines) if len(engines) == 1 else " then ".join(engines),
            "epochs": f"{len(history)}/{cfg['epochs']}",
            # training steps (evaluation not counted), and a teacher's labelling of the training images
            "cpu_hours": (sum(_cpu_seconds(r, threads) for r in history)
                          + run.get("teacher", {}).get("seconds_all_starts", 0.0) * threads) / 3600,
            "best_epoch": best["epoch"], "val_top1": best.get("val_top1"), "test_top1": best["test_top1"],
            "late_gain": late_gain(history), "status": run.get("status", "?")}


def _cpu_seconds(row: dict, threads: int) -> float:
    """An epoch's training CPU time; rows logged before `cpu_seconds` count their wall time on every thread."""
    if row.get("cpu_seconds") is not None:
        return row["cpu_seconds"]
    return row["seconds"] * row.get("threads", threads)


def table(rows: list[dict]) -> str:
    lines = ["| run | model | recipe | engine | epochs | CPU-hours | best.pt epoch | val top-1 | test top-1 "
             "| val gain, last 15 % |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        val = f"{100 * r['val_top1']:.2f} %" if r["val_top1"] is not None else "(no split)"
        hours = f"{r['cpu_hours']:.{2 if r['cpu_hours'] < 1 else 1}f}"
        gain = "–" if r["late_gain"] is None else f"{r['late_gain']:+.2f} points"
        lines.append(f"| {r['run']} | {r['model']} | {r['recipe']} | {r['engine']} | {r['epochs']} | {hours} | "
                     f"{r['best_epoch']} | {val} | {100 * r['test_top1']:.2f} % | {gain} |")
    return "\n".join(lines)


def cmd_runs(args) -> int:
    from rich.console import Console

    from bnnflow.atomic import write_text

    folders = args.folders or sorted(p for p in Path().glob(DEFAULT_GLOB) if p.is_dir())
    if not folders:
        raise BnnflowError(f"No run folders given and none under {DEFAULT_GLOB}: "
                           "pass the folders of 'bnnflow train' runs.")
    text = table([run_row(Path(f)) for f in folders])
    Console(highlight=False, soft_wrap=True).print(text, markup=False)
    if args.out:
        write_text(args.out, text + "\n")
    return 0
