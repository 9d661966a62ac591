"""The folding search end to end: a specialised graph and a budget in, a folded design out.

A pure function of the graph, the board and the limits: no console, no folders (the build
folder side is build_flows/build_folding.py, printing is folding/report.py).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnnflow.atomic import write_json
from bnnflow.errors import BnnflowError
from bnnflow.hw.boards import Board

from bnnflow import compat

compat.finn_ready()

from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.custom_op.registry import getCustomOp  # noqa: E402
from qonnx.transformation.general import GiveUniqueNodeNames  # noqa: E402

from finn.util.config import extract_model_config  # noqa: E402

from .. import fifos  # noqa: E402
from ..fifos import base_op, is_hw  # noqa: E402
from .evaluation import Evaluation, apply_attrs, evaluate  # noqa: E402
from .selection import _Streams, search  # noqa: E402
from ..resources import RES  # noqa: E402
from .units import HW_ATTRS, MVAU_WWIDTH_MAX, Unit, build_units  # noqa: E402

MAX_ROUNDS = 6  # search rounds that grow the reserve for the join FIFOs before giving up
RESERVE_GROWTH = 1.1  # per round, on top of what the last round overshot by
LUTRAM_BITS_PER_LUT = 64


@dataclass
class FoldResult:
    model: ModelWrapper  # folded, with the join depths on the join nodes
    evaluation: Evaluation
    config: dict  # FINN folding config (ApplyConfig format)
    units: int
    options: int
    seconds: float
    board: Board
    budget: dict[str, float]
    limits: dict[str, float]
    rounds: int


def _budget_vec(budget: dict[str, float]) -> np.ndarray:
    return np.array([budget[r] for r in RES], dtype=float)


def _cannot_fit(units: list[Unit], model: ModelWrapper, budget: dict[str, float], board: Board,
                what: str) -> BnnflowError:
    """Explain why not even the slowest folding fits: the layers and the shortfall."""
    b = _budget_vec(budget)
    low = [np.min(np.stack([o.res for o in u.options]), axis=0) for u in units]  # per unit minima
    need = np.sum(low, axis=0)
    weights = []
    for n in model.graph.node:
        if base_op(n.op_type) == "MVAU":
            inst = getCustomOp(n)
            bits = inst.get_nodeattr("MW") * inst.get_nodeattr("MH") * inst.get_input_datatype(1).bitwidth()
            weights.append((bits, n.name))
    weights.sort(reverse=True)
    total_bits = sum(w for w, _ in weights)
    top = ", ".join(f"{name} ({bits / 1e6:.2f} Mbit)" for bits, name in weights[:3])
    bram_bits = budget["BRAM_18K"] * 18 * 1024
    # LUTRAM: 64 bits per LUT, out of what the logic leaves of the LUT budget at the slowest folding
    lutram_bits = max(0.0, budget["LUT"] - need[0]) * LUTRAM_BITS_PER_LUT
    by_lut = sorted(((float(lo[0]), u.name) for lo, u in zip(low, units)), reverse=True)
    if need[0] > b[0]:
        short = (f"its logic alone needs at least {need[0]:,.0f} LUT at the slowest folding against a budget of "
                 f"{b[0]:,.0f}")
        top = ", ".join(f"{name} ({luts:,.0f} LUT)" for luts, name in by_lut[:3])
    elif need[2] > b[2]:
        short = f"it needs at least {need[2]:,.0f} DSP against a budget of {b[2]:,.0f}"
    elif need[1] > b[1]:
        short = f"it needs at least {need[1]:,.0f} BRAM18 against a budget of {b[1]:,.0f}"
    else:
        short = (f"its weights ({total_bits / 1e6:.2f} Mbit) fit neither the {budget['BRAM_18K']:.0f} BRAM18 "
                 f"({bram_bits / 1e6:.2f} Mbit, used in whole blocks per layer) nor, for the rest, the "
                 f"{lutram_bits / 1e6:.2f} Mbit of LUTRAM the logic leaves of the LUT budget")
    return BnnflowError(f"{what} cannot fit the {board.name} at any folding: {short}; the largest layers are "
                        f"{top}, so pick a smaller --variant or raise --lut-max / --bram-max.")


def fold(model: ModelWrapper, board: Board, lut_max: float | None = None, bram_max: float | None = None,
         mvau_wwidth_max: int = MVAU_WWIDTH_MAX, name: str = "The model", size_joins: bool = True,
         log=None) -> FoldResult:
    """Search the folding of a specialised graph for `board`; FIFOs and converters included."""
    t0 = time.time()
    lut_max = board.lut_max if lut_max is None else lut_max
    bram_max = board.bram_max if bram_max is None else bram_max
    budget = board.budget(lut_max, bram_max)
    model = ModelWrapper(copy.deepcopy(model.model))
    model = model.transform(GiveUniqueNodeNames())
    other = sorted({n.op_type for n in model.graph.node if not is_hw(n)})
    if other:
        raise BnnflowError(f"Folding needs the specialised HW graph, but this one still has {', '.join(other)}: "
                           "pass the model saved after the specialize_layers step.")
    units = build_units(model, board.part, mvau_wwidth_max)
    streams = _Streams(model, units, board.part)
    b = _budget_vec(budget)
    reserve = np.zeros(4)
    best = None
    rounds = 0
    for rounds in range(1, MAX_ROUNDS + 1):
        sel = search(units, b, streams, reserve)
        if sel is None:
            if best is not None:
                break
            if rounds == 1:
                raise _cannot_fit(units, model, budget, board, name)
            break
        folded = apply_attrs(ModelWrapper(copy.deepcopy(model.model)),
                             {k: v for o in sel.options for k, v in o.attrs.items()})
        ev = evaluate(folded, board, budget, size_joins=size_joins)
        if log:
            log(f"round {rounds}: T={sel.target:,} cycles, LUT {ev.finn_total['LUT']:,.0f} + FIFOs/DWCs "
                f"{ev.extra['LUT']:,.0f}, BRAM {ev.total['BRAM_18K']:.0f}, fits={ev.fits}")
        if ev.fits:
            best = (sel, folded, ev)
            break
        # keep free what the join FIFOs (and any other misestimate) cost beyond the search's own count
        over = np.array([ev.total[r] for r in RES]) - sel.totals
        grow = np.where(over > 0, over * (1.0 + 0.1 * rounds) + 1.0, 0.0)
        reserve = np.maximum(reserve * RESERVE_GROWTH, grow)
    if best is None:
        raise BnnflowError(f"{name}: no folding with its FIFOs and width converters fits the {board.name} "
                           "budget, so raise --lut-max / --bram-max or pick a smaller --variant.")
    sel, folded, ev = best
    if ev.fifo_plan is not None and ev.fifo_plan.fifos:
        fifos.apply_fifo_depths(folded, ev.fifo_plan)
    config = folding_config(folded, ev.fifo_plan)
    return FoldResult(folded, ev, config, len(units), sum(len(u.options) for u in units), time.time() - t0,
                      board, budget, {"LUT": lut_max, "BRAM": bram_max}, rounds)


def folding_config(model: ModelWrapper, plan: fifos.FifoPlan | None) -> dict:
    """FINN's folding-config JSON (as auto_folding_config.json), with the join FIFO depths."""
    cfg = extract_model_config(model, None, HW_ATTRS)
    cfg = {k: _jsonable(v) for k, v in cfg.items()}
    if plan is not None:
        for join, depths in plan.depths().items():
            cfg.setdefault(join, {})["inFIFODepths"] = [int(d) for d in depths]
    return cfg


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, bytes):
        return v.decode()
    return v


def write_config(config: dict, path: Path) -> Path:
    write_json(path, config)
    return path


def load_config(path: Path) -> dict:
    return json.loads(Path(path).read_text())
