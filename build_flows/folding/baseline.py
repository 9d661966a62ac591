"""FINN's own target_fps heuristic (SetFolding) as the baseline the search is compared with."""

from __future__ import annotations

import copy
import math
import time

from bnnflow.hw.boards import Board

from bnnflow import compat

compat.finn_ready()

from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402

from finn.transformation.fpgadataflow.set_folding import SetFolding  # noqa: E402

from ..flow import quiet_finn_logger  # noqa: E402
from .evaluation import Evaluation, evaluate  # noqa: E402
from .search import FoldResult, fold  # noqa: E402
from .units import MVAU_WWIDTH_MAX  # noqa: E402

FPS_BISECTION_STEPS = 22
FPS_RESOLUTION = 1.02  # stop bisecting once the fitting and failing targets are this close


def set_folding(model: ModelWrapper, board: Board, target_fps: float,
                mvau_wwidth_max: int = MVAU_WWIDTH_MAX) -> ModelWrapper:
    """FINN's SetFolding heuristic (what step_target_fps_parallelization does)."""
    cycles = max(1, int(board.clock_mhz * 1e6 / target_fps))
    m = ModelWrapper(copy.deepcopy(model.model))
    with quiet_finn_logger():
        return m.transform(SetFolding(cycles, mvau_wwidth_max=mvau_wwidth_max, two_pass_relaxation=True))


def best_target_fps(model: ModelWrapper, board: Board, budget: dict[str, float],
                    mvau_wwidth_max: int = MVAU_WWIDTH_MAX) -> tuple[float, Evaluation] | None:
    """The highest target_fps whose SetFolding result fits (bisection on log FPS)."""
    def ev_at(fps: float) -> Evaluation:
        return evaluate(set_folding(model, board, fps, mvau_wwidth_max), board, budget, size_joins=False)

    lo, hi = 1.0, board.clock_mhz * 1e6  # lo fits (or nothing does), hi never fits
    ev_lo = ev_at(lo)
    if not ev_lo.fits:
        return None
    best = (lo, ev_lo)
    for _ in range(FPS_BISECTION_STEPS):
        mid = math.sqrt(lo * hi)
        ev = ev_at(mid)
        if ev.fits:
            lo = mid
            if ev.fps >= best[1].fps:
                best = (mid, ev)
        else:
            hi = mid
        if hi / lo < FPS_RESOLUTION:
            break
    return best


def compare_with_target_fps(model: ModelWrapper, board: Board, lut_max: float | None = None,
                            bram_max: float | None = None, default_fps: int | None = None,
                            mvau_wwidth_max: int = MVAU_WWIDTH_MAX, name: str = "model",
                            result: FoldResult | None = None) -> dict:
    """FINN's SetFolding (at the board's default target and at the best fitting target) vs the search.

    All three are scored the same way: FINN's per-node estimates plus the depth-2 FIFOs FINN puts on
    every stream and its width converters. The search's designs also carry their sized join
    FIFOs; the baseline's joins are counted at depth 2 (in its favour). `result`: the search's
    result for this graph and limits, if already at hand.
    """
    budget = board.budget(lut_max, bram_max)
    default_fps = default_fps or board.default_target_fps
    rows = []
    t0 = time.time()
    ev = evaluate(set_folding(model, board, default_fps, mvau_wwidth_max), board, budget, size_joins=False)
    rows.append({"method": f"FINN SetFolding, target_fps={default_fps}", "target_fps": default_fps, **ev.row(board),
                 "seconds": round(time.time() - t0, 1)})
    t0 = time.time()
    best = best_target_fps(model, board, budget, mvau_wwidth_max)
    if best is not None:
        fps, ev = best
        rows.append({"method": f"FINN SetFolding, best fitting target_fps={fps:,.0f}", "target_fps": round(fps),
                     **ev.row(board), "seconds": round(time.time() - t0, 1)})
    t0 = time.time()
    res = result or fold(model, board, lut_max, bram_max, mvau_wwidth_max, name=name)
    rows.append({"method": "bnnflow search", "target_fps": None, **res.evaluation.row(board),
                 "seconds": round(time.time() - t0, 1)})
    base = max((r["fps"] for r in rows[:-1] if r["fits"]), default=0.0)
    return {"model": name, "board": board.name, "limits": {"LUT": budget["LUT"], "BRAM_18K": budget["BRAM_18K"]},
            "rows": rows, "speedup_vs_best_baseline": (rows[-1]["fps"] / base) if base else None,
            "search_ge_baseline": rows[-1]["fps"] >= base and rows[-1]["fits"]}
