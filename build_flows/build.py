"""Builds: a `BuildRequest` in, a build folder out (checkpoint -> QONNX -> FINN steps).

`run_build` runs one request as the user spelled it (fresh, --resume or --from-step);
`ensure_build` is what every other command uses: reuse the folder when it already holds the
requested build up to the step the command needs, continue it when it stopped earlier, and
otherwise build. Both check the folder's saved `BuildIdentity` first, so a folder built for
another board, other weights or another folding is never silently reused.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from bnnflow.atomic import write_json
from bnnflow.errors import BnnflowError, Interrupted, MissingToolError
from bnnflow.hw.boards import Board, get_board
from bnnflow.model_ref import is_onnx_model, is_user_model, parse_model_ref
from bnnflow.models.checkpoint import save_checkpoint
from bnnflow.models.export import export_model
from bnnflow.models.zoo import get_variant, weight_summary

from . import flow
from .build_folding import AUTO_FOLDING_FILE, fold_build
from .diagnose import check_before, check_build, diagnose_failure
from .estimates import print_summary, summarize
from .identity import (AUTO_FOLDING, BuildIdentity, BuildRequest, committed_folding, default_build_dir,
                       request_identity, request_source, saved_identity)
from .network import user_code, load_request_checkpoint, prepare_network
from .onnx_input import check_onnx_request, import_onnx

BREVITAS_FILE = flow.BREVITAS_FILE

__all__ = ["BuildRequest", "run_build", "ensure_build", "show_result", "BREVITAS_FILE", "AUTO_FOLDING",
           "prepare_network", "check_model", "check_target_fps", "default_build_dir"]


# ---------------------------------------------------------------------------- the request, checked


def folding_file(req: BuildRequest, board: Board, out: Path) -> Path | None:
    """The folding config the folding step applies: --folding FILE, the search's file for "auto",
    the board's committed config, or None (FINN's target_fps)."""
    if req.auto_folding:
        return out / AUTO_FOLDING_FILE  # written by the search once the graph is specialised
    if req.folding is not None:
        if not Path(req.folding).is_file():
            raise BnnflowError(f"Folding config {req.folding} does not exist: pass a JSON file like those in "
                               "hw/folding/.")
        return Path(req.folding).resolve()
    if req.target_fps is not None:
        return None
    return committed_folding(req.model, req.variant, board.name)


def wanted_identity(req: BuildRequest, board: Board, fold: Path | None) -> BuildIdentity:
    return request_identity(req, board, Path(AUTO_FOLDING) if req.auto_folding else fold)


def resolve_request(req: BuildRequest, board: Board, out: Path, state: flow.BuildState,
                    continuing: bool) -> tuple[BuildRequest, Path | None, BuildIdentity]:
    """(request, folding file, identity) of a build in `out`. Continuing a build there, an unnamed folding
    and budget are the folder's own, and req.any_weights takes the weights it holds."""
    if continuing:
        req = keep_saved_folding(req, state.data)
    fold = folding_file(req, board, out)
    want = wanted_identity(req, board, fold)
    have = saved_identity(state.data)
    if continuing and req.any_weights and have is not None:
        want = replace(want, weights=have.weights)  # the folder's own weights, whatever they are
    return req, fold, want


def network_name(req: BuildRequest) -> str:
    """'cnv/tiny', or a user's reference as written (it has no variants)."""
    return req.model if is_user_model(req.model) else f"{req.model}/{req.variant}"


def check_model(req: BuildRequest) -> None:
    """The network exists: a zoo model and variant, or a user's reference that parses and whose file is there."""
    if not is_user_model(req.model):
        parse_model_ref(req.model)  # an unknown name lists the zoo and the accepted forms
        get_variant(req.model, req.variant)
        request_source(req)  # --input-scale is for a user's network only
        return
    request_source(req)  # parses the reference, --model-args and --input-scale; hashes the file
    if is_onnx_model(req.model):
        check_onnx_request(req)
    if req.variant != "default":
        raise BnnflowError(f"--variant is for bnnflow's own models: {req.model} is built as its factory makes it "
                           "(pass --model-args for other sizes).")


def check_target_fps(target_fps: int | None, board: Board) -> None:
    limit = int(board.clock_mhz * 1e6)  # one image per clock cycle
    if target_fps is not None and not 0 < target_fps <= limit:
        raise BnnflowError(f"--target-fps must be a frame rate from 1 to {limit:,} (one image per cycle of the "
                           f"{board.clock_mhz:.0f} MHz clock), not {target_fps}.")


def keep_saved_folding(req: BuildRequest, state: dict) -> BuildRequest:
    """A request that names no folding and no budget continues with the folder's own."""
    if req.folding is None and req.target_fps is None and state.get("model") is not None:
        saved = state.get("folding")
        if saved is not None:
            req = replace(req, folding=Path(AUTO_FOLDING) if state.get("auto_folding") else Path(saved))
        elif state.get("target_fps") is not None:
            req = replace(req, target_fps=int(state["target_fps"]))
    budget = state.get("budget") or {}
    if req.lut_max is None and req.bram_max is None and budget:
        req = replace(req, lut_max=budget.get("lut_max"), bram_max=budget.get("bram_max"))
    return req


def _mismatch(out: Path, have: BuildIdentity, want: BuildIdentity, fields: list[str], fix: str) -> BnnflowError:
    return BnnflowError(f"Build folder {out} holds another build ({have.describe_difference(want, fields)}): {fix}.")


# ---------------------------------------------------------------------------- where to start


def plan_start(req: BuildRequest, out: Path, state: flow.BuildState, want: BuildIdentity,
               console: Console) -> str:
    """The first step to run; refuses to touch an existing build unless asked, or one built differently."""
    if not (req.from_step or req.resume):
        if out.exists() and any(out.iterdir()) and not req.force:
            raise BnnflowError(f"Build folder {out} already exists: pass --resume to continue it, --from-step to "
                               "redo part of it, --force to replace it, or another --build.")
        return flow.EXPORT  # with --force, run_build sets the old build aside until this one ends
    if req.from_step:
        flow.step_index(req.from_step)
        if not out.exists():
            raise BnnflowError(f"Build folder {out} does not exist, so there is nothing to restart from step "
                               f"{req.from_step}.")
    elif not state.path.exists():
        raise BnnflowError(f"There is no build to resume in {out}: run 'bnnflow build' without --resume first.")
    have = saved_identity(state.data)
    if have is not None:
        differ = have.differences(want, BuildIdentity.BEFORE_FOLDING)
        if differ:
            raise _mismatch(out, have, want, differ, "pass the matching flags, --force to rebuild it, "
                                                     "or another --build")
    start = req.from_step or _next_step(out, state)
    new_folding = have is not None and have.differences(want, BuildIdentity.FOLDING_FIELDS)
    if new_folding and flow.step_index(start) > flow.step_index(flow.FOLDING_STEP):
        console.print(f"The folding differs from the one this build used, so it restarts at {flow.FOLDING_STEP}.")
        start = flow.FOLDING_STEP
    return start


def _next_step(out: Path, state: flow.BuildState) -> str:
    done = state.done
    if not done:
        return flow.STEP_NAMES[0]
    nxt = flow.STEP_NAMES.index(done[-1]) + 1
    if nxt >= len(flow.STEP_NAMES):
        raise BnnflowError(f"The build in {out} already finished every step; use --from-step to redo one.")
    return flow.STEP_NAMES[nxt]


def _check_folding_early(req: BuildRequest, out: Path, fold: Path | None, board: Board, start: str) -> None:
    """A folding config given as a file is checked against the graph the folding step will see when
    this folder already holds it, so a bad config fails before anything is replaced."""
    if fold is None or not fold.is_file() or req.auto_folding:
        return
    if start != flow.EXPORT and flow.step_index(start) > flow.step_index(flow.APPLY_FOLDING_STEP):
        return
    from qonnx.core.modelwrapper import ModelWrapper

    from .folding_check import check_folding, load_folding_json

    config = load_folding_json(fold)
    data = flow.BuildState(out, strict=not req.force).data if out.is_dir() else {}
    if (data.get("model"), data.get("variant")) != (req.model, req.variant):
        return  # no graph of this model here: the flow checks it right before the folding step
    for step in (flow.FOLDING_STEP, flow.SPECIALISED_STEP):
        path = flow.intermediate_path(out, step)
        if path.is_file():
            check_folding(ModelWrapper(str(path)), config, f"Folding config {fold.name}", board.uram)
            return


# ---------------------------------------------------------------------------- running


def run_build(req: BuildRequest, console: Console | None = None) -> dict:
    """Run `req` as spelled; every input is checked before an existing build may be replaced (--force)."""
    console = console or Console()
    check_model(req)
    board = get_board(req.board)
    board.budget(req.lut_max, req.bram_max)  # validates the limits
    out = Path(req.out or default_build_dir(req.model, req.variant, board.name)).resolve()
    check_build_folder(out)
    stop = req.stop_after or flow.STEP_NAMES[-1]
    flow.step_index(stop)
    check_target_fps(req.target_fps, board)
    state = flow.BuildState(out, strict=not req.force)
    req, fold, want = resolve_request(req, board, out, state, bool(req.resume or req.from_step))
    loaded = load_request_checkpoint(req) if req.checkpoint is not None and not (req.resume or req.from_step) \
        else None
    start = plan_start(req, out, state, want, console)
    _check_folding_early(req, out, fold, board, start)
    backup = _set_aside(out) if start == flow.EXPORT and out.exists() and any(out.iterdir()) else None
    new_folder = start == flow.EXPORT and not out.exists()
    try:
        result = _run(req, console, board, out, fold, want, loaded, start, stop)
    except BaseException as exc:
        if start == flow.EXPORT and not flow.BuildState(out, strict=False).done:
            _clear(out, remove=new_folder)  # no step finished: nothing to resume, and the same command may run again
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


def check_build_folder(out: Path) -> None:
    """A --build that is a file, or a folder with files but no build_state.json (every folder bnnflow builds
    in has one from its start), is the user's: never built into, continued or replaced, --force or not."""
    if out.exists() and not out.is_dir():
        raise BnnflowError(f"{out} is a file, not a build folder: choose another --build.")
    if out.is_dir() and not (out / flow.STATE_FILE).exists() and any(out.iterdir()):
        raise BnnflowError(f"{out} holds files but is not a bnnflow build folder (no {flow.STATE_FILE}), so it is "
                           "neither built into nor replaced: choose another --build or an empty folder.")


def _clear(out: Path, remove: bool) -> None:
    if not out.is_dir():
        return
    if remove:
        shutil.rmtree(out, ignore_errors=True)
        return
    for path in out.iterdir():  # the user's empty folder stays
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def _set_aside(out: Path) -> Path:
    backup = out.with_name(f".{out.name}.replaced")
    shutil.rmtree(backup, ignore_errors=True)
    os.replace(out, backup)
    return backup


def _record_folding(state: flow.BuildState, req: BuildRequest, board: Board, fold: Path | None,
                    want: BuildIdentity) -> None:
    """The folding and budget this run applies become the build's own (deploy's manifest reads them)."""
    lut, bram = (req.lut_max if req.lut_max is not None else board.lut_max,
                 req.bram_max if req.bram_max is not None else board.bram_max)
    state.data.update({"folding": str(fold) if fold else None, "auto_folding": req.auto_folding,
                       "target_fps": None if fold else (req.target_fps or board.default_target_fps),
                       "budget": {"lut_max": lut, "bram_max": bram}, "identity": want.as_dict()})
    state.save()


def _export(req: BuildRequest, console: Console, board: Board, out: Path, state: flow.BuildState, loaded) -> None:
    if is_onnx_model(req.model):  # the user's QONNX file is the export
        origin = import_onnx(Path(req.model), out, flow.QONNX_FILE, req.input_scale or "raw")
        console.print("[yellow]Tie guard: not applied, a QONNX file has no Brevitas modules to adjust; rare "
                      "single-image logit differences at exact rounding ties would show in 'bnnflow verify'.[/]")
        state.data = {"model": req.model, "variant": req.variant, "board": board.name, "done": [],
                      "source": request_source(req), **origin}
        return
    net, origin = prepare_network(req, console, loaded)
    with console.status("Exporting QONNX..."), user_code(req, "Exporting"):
        export_model(net, out / flow.QONNX_FILE)
    # the exact Brevitas weights of this build, so `verify --build` compares like with like
    user = {"user_model": origin["user_model"]} if "user_model" in origin else None  # how to rebuild it
    save_checkpoint(out / BREVITAS_FILE, net, req.model, req.variant, meta=origin, extra=user)
    state.data = {"model": req.model, "variant": req.variant, "board": board.name, "done": [],
                  "weights": weight_summary(net), **origin}


def _run(req: BuildRequest, console: Console, board: Board, out: Path, fold: Path | None, want: BuildIdentity,
         loaded, start: str, stop: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    state = flow.BuildState(out)
    if not state.path.exists():
        state.save()  # marks the folder as a build from its start (check_build_folder)
    t_start = time.time()
    if start == flow.EXPORT:
        _export(req, console, board, out, state, loaded)
        start = flow.STEP_NAMES[0]
    if flow.step_index(start) <= flow.step_index(flow.FOLDING_STEP):
        _record_folding(state, req, board, fold, want)
    cfg = flow.make_config(out, board, fold, req.target_fps)
    folding_note = f"folding config {fold.name}" if fold else f"FINN target_fps={cfg.target_fps}"
    console.print(f"Building [bold]{network_name(req)}[/] for [bold]{board.name}[/] ({board.part}, "
                  f"{board.clock_mhz:.0f} MHz, {folding_note}) in {out}")
    stopped = None
    try:
        late = flow.step_index(start) > flow.step_index(flow.FOLDING_STEP)
        if req.auto_folding and (start == flow.FOLDING_STEP or (late and not fold.exists())):
            _auto_fold(out, board, req, console)  # the specialised graph is there: fold it for this budget
        _run_steps_with_progress(req, console, board, out, cfg, start, stop)
    except MissingToolError as exc:
        stopped = exc
    # reached only when every step ran (or a tool is missing): a failed step leaves summary.json as it was
    summary = summarize(out, board, board.budget(req.lut_max, req.bram_max))
    if summary:
        write_json(out / "summary.json", summary)
        summary["weights"] = flow.BuildState(out).data.get("weights")
    console.print(f"{'Stopped' if stopped else 'Finished'} after {time.time() - t_start:.0f} s.")
    return {"out": out, "summary": summary, "board": board, "stopped": stopped}


def _run_steps_with_progress(req: BuildRequest, console: Console, board: Board, out: Path, cfg, start: str,
                             stop: str) -> None:
    total = flow.step_index(stop) - flow.step_index(start) + 1
    counter = {"i": 0, "t": time.time()}
    status = console.status("")

    def on_step(step: flow.Step, phase: str) -> None:
        if phase == "start":
            check_before(out, step.name)  # a rule the graph breaks that streamlining would not survive
            counter["i"] += 1
            counter["t"] = time.time()
            status.update(f"[{counter['i']}/{total}] {step.title} ({step.name})...")
            return
        console.print(f"  [green]done[/] [{counter['i']}/{total}] {step.title:<34} "
                      f"{time.time() - counter['t']:6.1f} s")
        check_build(out, step.name)  # a node left in software after HW conversion: say which and why
        if req.auto_folding and step.name == flow.SPECIALISED_STEP:
            _auto_fold(out, board, req, console)

    status.start()
    try:
        flow.run_steps(out, cfg, start, stop, on_step)
    except (BnnflowError, KeyboardInterrupt):
        raise
    except Exception as exc:
        message = diagnose_failure(out, exc)
        if message is None:
            raise
        raise BnnflowError(message) from None
    finally:
        status.stop()


def _auto_fold(out: Path, board: Board, req: BuildRequest, console: Console) -> None:
    t0 = time.time()
    result, path = fold_build(out, board, lut_max=req.lut_max, bram_max=req.bram_max,
                              name=network_name(req))
    ev = result.evaluation
    console.print(f"  [green]done[/] folding search: {ev.fps:,.0f} FPS estimated, LUT {ev.total['LUT']:,.0f}, "
                  f"BRAM18 {ev.total['BRAM_18K']:.0f} (FIFOs included) -> {path.name} {time.time() - t0:6.1f} s")


# ---------------------------------------------------------------------------- reuse


def ensure_build(req: BuildRequest, until: str, console: Console | None = None,
                 replace_other: bool = False) -> tuple[Path, bool, dict | None]:
    """The build folder of `req` with every step up to `until` done: reused when it holds this build
    that far, continued when it stopped earlier (or restarted at the folding step when only the
    folding or budget differ), built otherwise. Returns (folder, reused?, run_build's result or None).

    A folder holding another network, variant, board or weights is refused unless req.force (or
    replace_other, for caches that own their folders); req.any_weights accepts whatever weights it holds.
    """
    console = console or Console(quiet=True)
    board = get_board(req.board)
    flow.step_index(until)
    out = Path(req.out or default_build_dir(req.model, req.variant, board.name)).resolve()
    check_build_folder(out)
    req = replace(req, out=out, stop_after=until, resume=False, from_step=None)
    state = flow.BuildState(out, strict=not req.force)
    have = saved_identity(state.data) if not req.force else None
    if have is None:
        if out.is_dir() and any(out.iterdir()) and not req.force:
            raise BnnflowError(f"Build folder {out} holds a build that never finished its export (or a damaged "
                               f"{flow.STATE_FILE}): pass --force to replace it, or another --build.")
        return out, False, run_build(replace(req, force=True), console)
    req, _, want = resolve_request(req, board, out, state, continuing=True)
    differ = have.differences(want, BuildIdentity.BEFORE_FOLDING)
    if differ and replace_other:
        return out, False, run_build(replace(req, force=True), console)
    if differ:
        raise _mismatch(out, have, want, differ, "pass --force to rebuild it there, or another --build")
    refold = flow.step_index(until) >= flow.step_index(flow.FOLDING_STEP) and \
        have.differences(want, BuildIdentity.FOLDING_FIELDS)
    done = state.done
    if not done:
        return out, False, run_build(replace(req, force=True), console)
    nxt = flow.STEP_NAMES.index(done[-1]) + 1
    waits_for_tool = nxt < len(flow.STEPS) and not flow.tool_available(flow.STEPS[nxt].tool)
    if not refold and ((until in done and flow.intermediate_path(out, until).is_file()) or waits_for_tool):
        return out, True, None
    start = flow.FOLDING_STEP if refold and nxt > flow.step_index(flow.FOLDING_STEP) else flow.STEP_NAMES[nxt]
    return out, False, run_build(replace(req, from_step=start), console)


def show_result(result: dict, console: Console) -> None:
    print_summary(result["summary"], console)
    out = result["out"]
    console.print(f"Outputs: {out}  (reports in {out / 'report'}, models in {out / 'intermediate_models'}, "
                  f"HLS/RTL code in {out / 'finn_tmp'}, log {out / 'build.log'})")
