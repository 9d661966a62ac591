"""`bnnflow build`: checkpoint (or calibrated random weights) -> QONNX -> FINN build folder."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from bnnflow.atomic import write_json
from bnnflow.errors import BnnflowError, Interrupted, MissingToolError
from bnnflow.hw.boards import Board, get_board
from bnnflow.models.checkpoint import calibrate, file_sha256, load_checkpoint, save_checkpoint
from bnnflow.models.export import export_model
from bnnflow.models.tie_guard import guard_rounding_ties
from bnnflow.models.zoo import build_model, get_variant, weight_summary

from . import flow
from .estimates import print_summary, summarize

BREVITAS_FILE = "model.brevitas.pt"
FOLDING_DIR = Path(__file__).resolve().parent.parent / "hw" / "folding"


@dataclass
class BuildRequest:
    model: str
    variant: str = "default"
    board: str = "pynq-z2"
    checkpoint: Path | None = None
    out: Path | None = None
    resume: bool = False
    from_step: str | None = None
    stop_after: str | None = None
    force: bool = False
    target_fps: int | None = None
    folding: Path | None = None
    seed: int = 0


def default_out(model: str, variant: str, board: str) -> Path:
    return Path("build") / f"{model}-{variant}-{board}"


AUTO_FOLDING = "auto"  # --folding auto: bnnflow's folding search after specialize_layers


def folding_file(model: str, variant: str, board: Board, override: Path | None,
                 out: Path | None = None) -> Path | None:
    if override is not None and str(override) == AUTO_FOLDING and out is not None:
        from .folding import AUTO_FOLDING_FILE

        return Path(out) / AUTO_FOLDING_FILE  # written by the search once the graph is specialised
    if override is not None:
        if not Path(override).is_file():
            raise BnnflowError(f"Folding config {override} does not exist: pass a JSON file like those in hw/folding/.")
        return Path(override).resolve()
    path = FOLDING_DIR / board.name / f"{model}-{variant}.json"
    return path if path.is_file() else None


def _load_checkpoint(req: BuildRequest) -> tuple:
    """load_checkpoint, with a payload of the right format but damaged fields also one sentence."""
    try:
        net, payload = load_checkpoint(req.checkpoint, req.model, req.variant)
        if not isinstance(payload.get("meta", {}), dict):
            raise TypeError("meta")
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise BnnflowError(f"Checkpoint {req.checkpoint} is damaged (its {exc} entry is missing or of the wrong "
                           "type): re-create it with 'bnnflow train'.") from None
    return net, payload


def prepare_network(req: BuildRequest, console: Console, loaded: tuple | None = None):
    """The Brevitas network to build (checkpoint, else calibrated random weights), tie-guarded.
    `loaded`: the (net, payload) of req.checkpoint when the caller has loaded it already."""
    net, origin = _load_or_init(req, console, loaded)
    origin["tie_guard"] = guard_rounding_ties(net)
    return net, origin


def _load_or_init(req: BuildRequest, console: Console, loaded: tuple | None = None):
    if req.checkpoint is not None:
        net, payload = loaded or _load_checkpoint(req)
        return net, {"checkpoint": str(req.checkpoint), "checkpoint_sha256": file_sha256(req.checkpoint),
                     "accuracy": payload.get("meta", {}).get("test_top1")}
    import torch

    from bnnflow.models.data import load_cifar10

    torch.manual_seed(req.seed)
    net = build_model(req.model, req.variant)
    try:
        images, _ = load_cifar10(None, "train")
        source = "CIFAR-10 training images"
    except BnnflowError:
        images = np.random.default_rng(req.seed).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
        source = "random pixels (no CIFAR-10 copy found)"
    calibrate(net, images, seed=req.seed)
    console.print(f"[yellow]No checkpoint given: building random weights (seed {req.seed}) with batch-norm "
                  f"statistics calibrated on {source}.[/]")
    return net, {"checkpoint": None, "seed": req.seed, "calibration": source, "accuracy": None}


def plan_folder(req: BuildRequest, out: Path) -> str:
    """Decide the first step; refuse to touch an existing build unless asked."""
    if req.from_step:
        flow.step_index(req.from_step)
        if not out.exists():
            raise BnnflowError(f"Build folder {out} does not exist, so there is nothing to restart from step {req.from_step}.")
        return req.from_step
    if req.resume:
        state = flow.BuildState(out)
        if not state.path.exists():
            raise BnnflowError(f"There is no build to resume in {out}: run 'bnnflow build' without --resume first.")
        done = state.done
        if not done:
            return flow.STEP_NAMES[0]
        nxt = flow.STEP_NAMES.index(done[-1]) + 1
        if nxt >= len(flow.STEP_NAMES):
            raise BnnflowError(f"The build in {out} already finished every step; use --from-step to redo one.")
        return flow.STEP_NAMES[nxt]
    if out.exists() and any(out.iterdir()) and not req.force:
        raise BnnflowError(f"Build folder {out} already exists: pass --resume to continue it, --from-step to redo "
                           "part of it, --force to replace it, or --out for a new folder.")
    return "export"  # with --force, run_build sets the old build aside and deletes it only once this one ends


def _check_folding_early(req: BuildRequest, out: Path, fold: Path | None, board: Board, start: str) -> None:
    """A folding config given as a file is read now, and checked against the graph the folding step will
    see when this folder already holds it, so a bad config fails before anything is replaced."""
    late = start != "export" and flow.step_index(start) > flow.step_index("apply_folding_config")
    if req.folding is not None and late:
        raise BnnflowError(f"--folding takes effect in step apply_folding_config, which a build starting at {start} "
                           "skips: pass --from-step apply_folding_config (or an earlier step).")
    if fold is None or not fold.is_file() or late:
        return
    from qonnx.core.modelwrapper import ModelWrapper

    from .folding_check import check_folding, load_folding_json

    config = load_folding_json(fold)
    data = flow.BuildState(out, strict=not req.force).data if out.is_dir() else {}
    if (data.get("model"), data.get("variant")) != (req.model, req.variant):
        return  # no graph of this model here: the flow checks it right before the folding step
    for step in ("target_fps_parallelization", "specialize_layers"):
        path = flow.intermediate_path(out, step)
        if path.is_file():
            check_folding(ModelWrapper(str(path)), config, f"Folding config {fold.name}", board.uram)
            return


def _set_aside(out: Path) -> Path:
    backup = out.with_name(f".{out.name}.replaced")
    shutil.rmtree(backup, ignore_errors=True)
    os.replace(out, backup)
    return backup


def run_build(req: BuildRequest, console: Console | None = None) -> dict:
    console = console or Console()
    get_variant(req.model, req.variant)
    board = get_board(req.board)
    out = Path(req.out or default_out(req.model, req.variant, board.name)).resolve()
    # every input is checked before plan_folder may replace an existing build (--force)
    stop = req.stop_after or flow.STEP_NAMES[-1]
    flow.step_index(stop)
    check_target_fps(req.target_fps, board)
    fold = folding_file(req.model, req.variant, board, req.folding, out)
    loaded = None
    if req.checkpoint is not None and not (req.resume or req.from_step):
        loaded = _load_checkpoint(req)
    start = plan_folder(req, out)
    _check_folding_early(req, out, fold, board, start)
    auto = req.folding is not None and str(req.folding) == AUTO_FOLDING
    cfg = flow.make_config(out, board, fold, req.target_fps)
    backup = _set_aside(out) if start == "export" and out.exists() and any(out.iterdir()) else None
    try:
        result = _run(req, console, board, out, fold, loaded, start, stop, auto, cfg)
    except BaseException as exc:
        if backup is None:
            raise
        shutil.rmtree(out, ignore_errors=True)  # the new build failed: the old one comes back as it was
        os.replace(backup, out)
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"Interrupted: {out} holds the build it held before --force, unchanged.") from None
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    return result


def check_target_fps(target_fps: int | None, board: Board) -> None:
    limit = int(board.clock_mhz * 1e6)  # one image per clock cycle
    if target_fps is not None and not 0 < target_fps <= limit:
        raise BnnflowError(f"--target-fps must be a frame rate from 1 to {limit:,} (one image per cycle of the "
                           f"{board.clock_mhz:.0f} MHz clock), not {target_fps}.")


def _run(req: BuildRequest, console: Console, board: Board, out: Path, fold: Path | None, loaded, start: str,
         stop: str, auto: bool, cfg) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    state = flow.BuildState(out)
    t_start = time.time()
    if start == "export":
        net, origin = prepare_network(req, console, loaded)
        with console.status("Exporting QONNX..."):
            export_model(net, out / flow.QONNX_FILE)
        # the exact Brevitas weights of this build, so `verify --build` compares like with like
        save_checkpoint(out / BREVITAS_FILE, net, req.model, req.variant, meta=origin)
        state.data = {"model": req.model, "variant": req.variant, "board": board.name, "done": [],
                      "folding": str(fold) if fold else None,
                      "target_fps": None if fold else (req.target_fps or board.default_target_fps),
                      "weights": weight_summary(net), **origin}
        state.save()
        start = flow.STEP_NAMES[0]
    else:
        if state.data.get("model") not in (None, req.model) or state.data.get("variant") not in (None, req.variant):
            raise BnnflowError(f"Build folder {out} holds {state.data.get('model')}/{state.data.get('variant')}, "
                               f"not {req.model}/{req.variant}: pass that model or another --out.")
    folding_note = f"folding config {fold.name}" if fold else f"FINN target_fps={cfg.target_fps}"
    console.print(f"Building [bold]{req.model}/{req.variant}[/] for [bold]{board.name}[/] ({board.part}, "
                  f"{board.clock_mhz:.0f} MHz, {folding_note}) in {out}")
    counter = {"i": 0}
    total = flow.step_index(stop) - flow.step_index(start) + 1
    status = console.status("")
    status.start()
    t_step = [time.time()]

    def on_step(step: flow.Step, phase: str) -> None:
        if phase == "start":
            counter["i"] += 1
            t_step[0] = time.time()
            status.update(f"[{counter['i']}/{total}] {step.title} ({step.name})...")
        else:
            console.print(f"  [green]done[/] [{counter['i']}/{total}] {step.title:<34} {time.time() - t_step[0]:6.1f} s")
            if auto and step.name == "specialize_layers":
                _auto_fold(out, board, req, console)

    stopped = None
    try:
        if auto and flow.step_index(start) > flow.step_index("specialize_layers") and not fold.exists():
            _auto_fold(out, board, req, console)
        flow.run_steps(out, cfg, start, stop, on_step)
    except MissingToolError as exc:
        stopped = exc
    finally:
        status.stop()
    # reached only when every step ran (or a tool is missing): a failed step leaves summary.json as it was
    summary = summarize(out, board)
    if summary:
        write_json(out / "summary.json", summary)
        summary["weights"] = state.data.get("weights") or flow.BuildState(out).data.get("weights")
    console.print(f"{'Stopped' if stopped else 'Finished'} after {time.time() - t_start:.0f} s.")
    return {"out": out, "summary": summary, "board": board, "stopped": stopped}


def _auto_fold(out: Path, board: Board, req: BuildRequest, console: Console) -> None:
    from .folding import fold_build

    t0 = time.time()
    result, path = fold_build(out, board, name=f"{req.model}/{req.variant}")
    ev = result.evaluation
    console.print(f"  [green]done[/] folding search: {ev.fps:,.0f} FPS estimated, LUT {ev.total['LUT']:,.0f}, "
                  f"BRAM18 {ev.total['BRAM_18K']:.0f} (FIFOs included) -> {path.name} {time.time() - t0:6.1f} s")


def show_result(result: dict, console: Console) -> None:
    print_summary(result["summary"], console)
    out = result["out"]
    console.print(f"Outputs: {out}  (reports in {out / 'report'}, models in {out / 'intermediate_models'}, "
                  f"HLS/RTL code in {out / 'finn_tmp'}, log {out / 'build.log'})")
