"""Automatic folding: the fastest PE/SIMD choice whose FINN estimates fit the board.

The search works on the specialised graph (the model saved after `specialize_layers`):

1. Units. Every HW node is a unit, except that a sliding-window generator goes with the MVAU
   (or pool) it feeds, so the two are folded together. For each unit all legal foldings are
   enumerated with FINN's rules (those of SetFolding): MVAU SIMD divides MW and PE divides MH,
   SIMD * weight bits <= mvau_wwidth_max (FINN's default 36), the weight stream of an HLS MVAU
   in internal_decoupled mode at most MAX_ALLOWED_AP_INT_W bits (internal_embedded where it is
   wider); a window generator's SIMD divides its input channels, or equals them with
   parallel_window=1 (whole windows per cycle); with each MVAU folding go the generator
   foldings worth having: the narrowest SIMD that keeps up with the MVAU (SetFolding's choice,
   a width converter in between), the MVAU's own SIMD (no converter), or parallel_window when
   no SIMD keeps up; a depthwise generator takes the PE of its pool; thresholds, duplicate,
   add, pool, label-select PE divide their channels; concat SIMD divides every input's
   channels; padding SIMD divides its channels.
   Memory choices come along where they change the estimate: MVAU weights in BRAM or LUTRAM,
   HLS MVAU multipliers in LUTs or DSPs (not for XNOR layers), window buffers in LUTRAM or BRAM.
   Each folding is scored with FINN's own per-node estimates (get_exp_cycles, lut_/bram_/dsp_/
   uram_estimation), and dominated ones (slower and no cheaper in anything) are dropped.
2. Target interval. The throughput of a dataflow pipeline is set by its slowest node, so the
   search is a binary search over the achievable initiation intervals T (every cycle count any
   unit can reach): for a given T every unit takes its cheapest folding with cycles <= T, so no
   node is faster than it needs to be and none idles. "Cheapest" is a weighted sum of LUT,
   BRAM, DSP (and URAM) shares of the budget; the weights are swept (a Lagrangian relaxation of
   the multiple-choice knapsack) so that a design short of BRAM trades weights into LUTRAM and
   vice versa. T is feasible when some weighting fits the budget.
3. FIFOs and converters. The depth-2 FIFOs FINN inserts on every stream and the data-width
   converters between nodes of different stream widths are part of every selection's cost
   (FINN's StreamingFIFO / DWC estimates; stream width is a Pareto dimension), and a local
   pass re-picks each unit's folding to match its neighbours' widths where that is cheaper.
   The join FIFOs are sized on the chosen folding by bnnflow.build_flows.fifos (a simulation);
   if they push the design over budget, their cost is reserved and the search runs again.

FINN's target_fps heuristic (SetFolding) is the baseline: `compare_with_target_fps` runs both
on the same graph and scores both with the same estimator.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bnnflow import compat
from bnnflow.atomic import write_json
from bnnflow.errors import BnnflowError
from bnnflow.hw.boards import Board

compat.finn_ready()

from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.custom_op.registry import getCustomOp  # noqa: E402
from qonnx.transformation.general import GiveUniqueNodeNames  # noqa: E402

from finn.analysis.fpgadataflow.dataflow_performance import dataflow_performance  # noqa: E402
from finn.analysis.fpgadataflow.res_estimation import res_estimation  # noqa: E402
from finn.transformation.fpgadataflow.annotate_cycles import AnnotateCycles  # noqa: E402
from finn.transformation.fpgadataflow.set_folding import SetFolding  # noqa: E402
from finn.util.basic import MAX_ALLOWED_AP_INT_W  # noqa: E402
from finn.util.config import extract_model_config  # noqa: E402
from finn.util.fpgadataflow import is_hls_node  # noqa: E402

from . import fifos  # noqa: E402
from .fifos import base_op, is_hw  # noqa: E402

RES = ("LUT", "BRAM_18K", "DSP", "URAM")
MVAU_WWIDTH_MAX = 36  # FINN's DataflowBuildConfig.mvau_wwidth_max default
SPECIALISED_STEP = "specialize_layers"
# FINN's own list of folding attributes (step_target_fps_parallelization), as the JSON carries them
HW_ATTRS = ["PE", "SIMD", "EmbFold", "SeqFold", "parallel_window", "ram_style", "ram_style_thresholds",
            "ram_style_mask", "depth", "impl_style", "resType", "mac_resource", "mem_mode",
            "runtime_writeable_weights", "depth_trigger_uram", "depth_trigger_bram"]
PE_OPS = ("Thresholding", "DuplicateStreams", "GlobalAccPool", "ReplicateStream")
ELEMENTWISE = ("ElementwiseAdd", "ElementwiseSub", "ElementwiseMul", "ElementwiseMax", "ElementwiseMin",
               "ElementwiseAnd", "ElementwiseOr", "ElementwiseXor", "ElementwiseDiv")
# the LUT / BRAM weighting sweep of the Lagrangian selection (share of the weight on LUT)
LUT_WEIGHTS = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)
DSP_WEIGHTS = (0.3, 1.0, 3.0)


def divisors(n: int) -> list[int]:
    n = int(n)
    return [d for d in range(1, n + 1) if n % d == 0]


# --------------------------------------------------------------------------- units and options

@dataclass
class Option:
    attrs: dict[str, dict]  # node -> attribute values
    cycles: int
    res: np.ndarray  # LUT, BRAM_18K, DSP, URAM
    widths: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)  # node -> (in, out)

    @property
    def stream_bits(self) -> int:
        return sum(sum(i) + sum(o) for i, o in self.widths.values())


@dataclass
class Unit:
    nodes: list[str]
    options: list[Option]
    fixed: bool = False  # no folding knob known: kept as it is

    @property
    def name(self) -> str:
        return "+".join(self.nodes)


class _Scorer:
    """Set attributes on a node and read FINN's estimates back (cached per attribute set)."""

    def __init__(self, model: ModelWrapper, fpgapart: str):
        self.model = model
        self.part = fpgapart
        self.insts = {n.name: getCustomOp(n) for n in model.graph.node}
        self.dyn = {n.name: [i for i, t in enumerate(n.input) if t and model.get_initializer(t) is None]
                    for n in model.graph.node}
        self.n_out = {n.name: len(n.output) for n in model.graph.node}
        self.cache: dict[tuple, tuple | None] = {}

    def score(self, name: str, attrs: dict):
        """(cycles, resources, (in widths, out widths)) of node `name` folded as `attrs`; None if illegal."""
        key = (name, tuple(sorted(attrs.items())))
        if key not in self.cache:
            inst = self.insts[name]
            try:
                for k, v in attrs.items():
                    inst.set_nodeattr(k, v)
                r = inst.node_res_estimation(self.part)
                cyc = int(inst.get_exp_cycles())
                widths = (tuple(int(inst.get_instream_width(i)) for i in self.dyn[name]),
                          tuple(int(inst.get_outstream_width(q)) for q in range(self.n_out[name])))
                for i in self.dyn[name]:
                    inst.get_folded_input_shape(i)  # raises on an illegal folding
                self.cache[key] = (cyc, np.array([r["LUT"], r["BRAM_18K"], r["DSP"], r["URAM"]], dtype=float),
                                   widths)
            except Exception:  # noqa: BLE001 - FINN signals an illegal folding in many ways
                self.cache[key] = None
        return self.cache[key]

    def option(self, parts: list[tuple[str, dict]]) -> Option | None:
        """One unit option from (node, attrs) parts: the slowest part sets the cycles."""
        cyc, res, widths = 0, np.zeros(4), {}
        for name, attrs in parts:
            sc = self.score(name, attrs)
            if sc is None:
                return None
            cyc = max(cyc, sc[0])
            res = res + sc[1]
            widths[name] = sc[2]
        return Option({name: attrs for name, attrs in parts}, cyc, res, widths)


def _pareto(options: list[Option]) -> list[Option]:
    if len(options) <= 1:
        return options
    cyc = np.array([o.cycles for o in options], dtype=float)
    # stream width is a cost too (FIFOs and converters FINN adds), so it takes part in the dominance
    res = np.stack([np.append(o.res, o.stream_bits) for o in options])
    keep = []
    order = np.lexsort((res.sum(1), cyc))
    for i in order:
        dominated = (cyc <= cyc[i]) & np.all(res <= res[i], axis=1) & ((cyc < cyc[i]) | np.any(res < res[i], axis=1))
        if not dominated.any():
            if not any(options[j].cycles == options[i].cycles and np.array_equal(res[j], res[i]) for j in keep):
                keep.append(i)
    return [options[i] for i in keep]


def _mvau_options(sc: _Scorer, node, swg, mvau_wwidth_max: int) -> list[Option]:
    """MVAU foldings; with a window generator in front, each with the window generators worth pairing.

    For an MVAU folding of c cycles the generator takes the narrowest SIMD that still keeps up
    (what SetFolding does; a width converter joins the two), the SIMD equal to the MVAU's (no
    converter), or whole windows per cycle (parallel_window) when no SIMD keeps up.
    """
    inst = sc.insts[node.name]
    mw, mh = inst.get_nodeattr("MW"), inst.get_nodeattr("MH")
    wbits = inst.get_input_datatype(1).bitwidth()
    xnor = bool(inst.get_nodeattr("binaryXnorMode"))
    hls = is_hls_node(node)
    simds = [s for s in divisors(mw) if s == 1 or s * wbits <= mvau_wwidth_max]
    res_types = ["lut", "dsp"] if hls and not xnor else [None]
    swg_opts: list[tuple[int, dict]] = []  # (cycles, attrs)
    if swg is not None:
        sinst = sc.insts[swg.name]
        c = sinst.get_nodeattr("IFMChannels")
        k = int(np.prod(sinst.get_nodeattr("ConvKernelDim")))
        cands = [{"SIMD": x, "parallel_window": 0} for x in divisors(c)]
        if k > 1:
            cands.append({"SIMD": c, "parallel_window": 1})
        for a in cands:
            for ram in ("distributed", "block"):
                r = sc.score(swg.name, {**a, "ram_style": ram})
                if r is not None:
                    swg_opts.append((r[0], {**a, "ram_style": ram}))
    options = []
    for simd in simds:
        for pe in divisors(mh):
            wide = pe * simd * wbits > MAX_ALLOWED_AP_INT_W
            mems = [("internal_embedded", "auto")] if (hls and wide) else \
                [("internal_decoupled", "block"), ("internal_decoupled", "distributed")]
            for mem_mode, ram in mems:
                for res_type in res_types:
                    attrs = {"PE": pe, "SIMD": simd, "mem_mode": mem_mode, "ram_style": ram,
                             "runtime_writeable_weights": 0}
                    if res_type:
                        attrs["resType"] = res_type
                    m = sc.score(node.name, attrs)
                    if m is None:
                        continue
                    if swg is None:
                        options.append(sc.option([(node.name, attrs)]))
                        continue
                    picks = []
                    for ram_s in ("distributed", "block"):
                        mine = [(cyc, a) for cyc, a in swg_opts if a["ram_style"] == ram_s]
                        keeping = [(cyc, a) for cyc, a in mine if cyc <= m[0] and not a["parallel_window"]]
                        if keeping:
                            picks.append(min(keeping, key=lambda x: x[1]["SIMD"])[1])
                        else:
                            picks += [a for cyc, a in mine if a["parallel_window"]]
                        picks += [a for cyc, a in mine if a["SIMD"] == simd and not a["parallel_window"]]
                    seen = set()
                    for a in picks:
                        key = tuple(sorted(a.items()))
                        if key in seen:
                            continue
                        seen.add(key)
                        o = sc.option([(swg.name, a), (node.name, attrs)])
                        if o is not None:
                            options.append(o)
    return [o for o in options if o is not None]


def _pool_options(sc: _Scorer, node, swg) -> list[Option]:
    inst = sc.insts[node.name]
    options = []
    for pe in divisors(inst.get_nodeattr("Channels")):
        if swg is None:
            parts = [[(node.name, {"PE": pe})]]
        else:
            parts = [[(swg.name, {"SIMD": pe, "ram_style": ram, "parallel_window": 0}), (node.name, {"PE": pe})]
                     for ram in ("distributed", "block")]
        for p in parts:
            o = sc.option(p)
            if o is not None:
                options.append(o)
    return options


def _single_options(sc: _Scorer, node) -> list[Option] | None:
    inst = sc.insts[node.name]
    op = base_op(node.op_type)
    if op in PE_OPS:
        values, attr = divisors(inst.get_nodeattr("NumChannels")), "PE"
    elif op in ELEMENTWISE:
        values, attr = divisors(inst.get_normal_output_shape()[-1]), "PE"
    elif op == "LabelSelect":
        values, attr = divisors(inst.get_nodeattr("Labels")), "PE"
    elif op == "StreamingConcat":
        values = functools.reduce(lambda a, b: [d for d in a if d in b],
                                  [divisors(c) for c in inst.get_nodeattr("ChannelsPerStream")])
        attr = "SIMD"
    elif op in ("FMPadding", "FMPadding_Pixel"):
        values, attr = divisors(inst.get_nodeattr("NumChannels")), "SIMD"
    elif op == "ConvolutionInputGenerator" and not inst.get_nodeattr("depthwise"):
        parts = [[(node.name, {"SIMD": s, "ram_style": ram, "parallel_window": 0})]
                 for s in divisors(inst.get_nodeattr("IFMChannels")) for ram in ("distributed", "block")]
        return [o for o in (sc.option(p) for p in parts) if o is not None]
    else:
        return None
    return [o for o in (sc.option([(node.name, {attr: v})]) for v in values) if o is not None]


def build_units(model: ModelWrapper, fpgapart: str, mvau_wwidth_max: int = MVAU_WWIDTH_MAX) -> list[Unit]:
    """Every folding knob of the graph, grouped into units with their legal, Pareto-optimal options."""
    sc = _Scorer(model, fpgapart)
    nodes = [n for n in model.graph.node if is_hw(n)]
    paired: dict[str, object] = {}  # consumer -> its window generator
    for n in nodes:
        op = base_op(n.op_type)
        if op not in ("MVAU", "Pool"):
            continue
        prod = model.find_producer(n.input[0])
        if prod is None or base_op(prod.op_type) != "ConvolutionInputGenerator":
            continue
        if len(model.find_consumers(prod.output[0]) or []) != 1:
            continue
        dw = getCustomOp(prod).get_nodeattr("depthwise")
        if (op == "MVAU" and not dw) or (op == "Pool" and dw):
            paired[n.name] = prod
    swgs = {p.name for p in paired.values()}
    units = []
    for n in nodes:
        if n.name in swgs:
            continue
        op = base_op(n.op_type)
        swg = paired.get(n.name)
        if op == "MVAU":
            opts = _mvau_options(sc, n, swg, mvau_wwidth_max)
        elif op == "Pool":
            opts = _pool_options(sc, n, swg)
        else:
            opts = _single_options(sc, n)
        names = ([swg.name] if swg is not None else []) + [n.name]
        if not opts:
            # unknown op (or no legal folding): keep it as it is
            o = sc.option([(x, {}) for x in names])
            if o is None:
                raise BnnflowError(f"FINN cannot estimate {n.name} ({n.op_type}) as it is folded: "
                                   "check the model saved after specialize_layers.")
            units.append(Unit(names, [o], fixed=True))
            continue
        units.append(Unit(names, _pareto(opts)))
    return units


# --------------------------------------------------------------------------- selection

def _weights(budget: np.ndarray) -> np.ndarray:
    """Rows of per-resource weights (scaled by the budget) for the Lagrangian sweep."""
    inv = np.array([1.0 / b if b > 0 else 1e6 for b in budget])
    rows = []
    for a in LUT_WEIGHTS:
        for d in DSP_WEIGHTS:
            rows.append(inv * np.array([a, 1.0 - a, d * 0.5, 1.0]))
    return np.array(rows)


class _Streams:
    """The FIFOs (depth 2) and width converters FINN will put on the streams of a selection."""

    def __init__(self, model: ModelWrapper, units: list[Unit], fpgapart: str):
        self.part = fpgapart
        nodes = [n for n in model.graph.node if is_hw(n)]
        producers = {t: (n.name, q) for n in nodes for q, t in enumerate(n.output)}
        self.edges: list[tuple[str, int, str, int]] = []  # src, out port, dst, position among dst's inputs
        for n in nodes:
            dyn = [i for i, t in enumerate(n.input) if t and model.get_initializer(t) is None]
            for k, i in enumerate(dyn):
                if n.input[i] in producers:
                    src, q = producers[n.input[i]]
                    self.edges.append((src, q, n.name, k))
        unit_of = {name: ui for ui, u in enumerate(units) for name in u.nodes}
        self.incident: list[list[int]] = [[] for _ in units]
        for ei, (src, _, dst, _) in enumerate(self.edges):
            for ui in {unit_of[src], unit_of[dst]}:
                self.incident[ui].append(ei)

    def edge_cost(self, ei: int, widths: dict) -> np.ndarray:
        src, q, dst, k = self.edges[ei]
        wo, wi = widths[src][1][q], widths[dst][0][k]
        lut, bram = fifos.fifo_cost(fifos.DEFAULT_DEPTH, wo, self.part)
        if wo != wi:  # producer -> FIFO -> converter -> FIFO -> consumer
            l2, b2 = fifos.fifo_cost(fifos.DEFAULT_DEPTH, wi, self.part)
            lut, bram = lut + l2 + fifos.dwc_cost(wo, wi, self.part), bram + b2
        return np.array([lut, bram, 0.0, 0.0])

    def cost(self, widths: dict) -> np.ndarray:
        return sum((self.edge_cost(ei, widths) for ei in range(len(self.edges))), np.zeros(4))


class _Tables:
    """Per-unit option arrays for fast selection at a target interval."""

    def __init__(self, units: list[Unit], weights: np.ndarray):
        self.units = units
        self.cyc = [np.array([o.cycles for o in u.options], dtype=np.int64) for u in units]
        self.res = [np.stack([o.res for o in u.options]) for u in units]
        self.cost = [r @ weights.T for r in self.res]  # options x weightings
        self.n_w = weights.shape[0]

    def select(self, target: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(choice index per unit per weighting [units x W], totals [W x 4]); None if a unit cannot meet T."""
        choice = np.zeros((len(self.units), self.n_w), dtype=np.int64)
        totals = np.zeros((self.n_w, 4))
        for i, (cyc, cost, res) in enumerate(zip(self.cyc, self.cost, self.res)):
            ok = cyc <= target
            if not ok.any():
                return None
            # cheapest; ties go to the slowest (least parallel) option
            c = np.where(ok[:, None], cost, np.inf) - 1e-12 * cyc[:, None]
            idx = np.argmin(c, axis=0)
            choice[i] = idx
            totals += res[idx]
        return choice, totals


def _align(units: list[Unit], choice: list[int], target: int, weight: np.ndarray, streams: _Streams,
           passes: int = 2) -> list[int]:
    """Local improvement: re-pick each unit's folding counting the FIFOs/converters on its streams."""
    choice = list(choice)
    widths = {k: v for i, u in enumerate(units) for k, v in u.options[choice[i]].widths.items()}
    for _ in range(passes):
        changed = False
        for ui, u in enumerate(units):
            if len(u.options) < 2:
                continue
            best, best_cost = choice[ui], None
            for oi, o in enumerate(u.options):
                if o.cycles > target:
                    continue
                trial = {**widths, **o.widths}
                c = float(o.res @ weight) + sum(float(streams.edge_cost(ei, trial) @ weight)
                                                for ei in streams.incident[ui])
                if best_cost is None or c < best_cost - 1e-12:
                    best, best_cost = oi, c
            if best != choice[ui]:
                choice[ui] = best
                widths.update(u.options[best].widths)
                changed = True
        if not changed:
            break
    return choice


def _fits(totals: np.ndarray, budget: np.ndarray) -> np.ndarray:
    return np.all(totals <= budget[None, :] + 1e-9, axis=1)


@dataclass
class Selection:
    target: int
    options: list[Option]
    totals: np.ndarray  # layers + depth-2 FIFOs + converters


def search(units: list[Unit], budget: np.ndarray, streams: _Streams | None = None,
           reserve: np.ndarray | None = None) -> Selection | None:
    """Smallest target interval whose cheapest per-unit foldings (plus their streams) fit `budget`.

    budget: LUT, BRAM_18K, DSP, URAM; reserve: kept free on top (the join FIFOs).
    """
    reserve = np.zeros(4) if reserve is None else reserve
    avail = budget - reserve
    weights = _weights(budget)
    tables = _Tables(units, weights)
    candidates = np.unique(np.concatenate(tables.cyc))
    t_min = max(int(c.min()) for c in tables.cyc)
    candidates = candidates[candidates >= t_min]

    def feasible(t: int):
        sel = tables.select(int(t))
        if sel is None:
            return None
        choice, totals = sel
        ok = _fits(totals, avail)
        if not ok.any():
            return None
        share = np.max(totals / np.maximum(budget, 1e-9)[None, :], axis=1)
        for w in [int(i) for i in np.argsort(np.where(ok, share, np.inf))[:4] if ok[i]]:
            pick = list(choice[:, w])
            if streams is not None:
                pick = _align(units, pick, int(t), weights[w], streams)
            opts = [u.options[pick[i]] for i, u in enumerate(units)]
            total = sum((o.res for o in opts), np.zeros(4))
            if streams is not None:
                total = total + streams.cost({k: v for o in opts for k, v in o.widths.items()})
            if np.all(total <= avail + 1e-9):
                return Selection(int(t), opts, total)
        return None

    best = feasible(candidates[-1])
    if best is None:
        return None
    lo, hi = 0, len(candidates) - 1  # candidates[hi] is feasible
    while lo < hi:
        mid = (lo + hi) // 2
        s = feasible(candidates[mid])
        if s is not None:
            best, hi = s, mid
        else:
            lo = mid + 1
    # the fit is not strictly monotone in T: look a little further down
    for t in candidates[max(0, hi - 12): hi][::-1]:
        s = feasible(t)
        if s is not None and s.target < best.target:
            best = s
    return best


# --------------------------------------------------------------------------- whole-design evaluation

def apply_attrs(model: ModelWrapper, attrs: dict[str, dict]) -> ModelWrapper:
    by_name = {n.name: n for n in model.graph.node}
    for name, a in attrs.items():
        inst = getCustomOp(by_name[name])
        for k, v in a.items():
            inst.set_nodeattr(k, v)
    return model


@dataclass
class Evaluation:
    """One folded design scored with FINN's estimates plus FIFOs and width converters."""

    max_cycles: int
    bottleneck: str
    fps: float
    latency_ms: float  # FINN's critical-path estimate (no overlap between layers)
    nodes: dict[str, dict]  # FINN's res_estimation per node (+ cycles)
    finn_total: dict[str, float]
    extra: dict[str, float]  # FIFOs + DWCs
    total: dict[str, float]
    budget: dict[str, float]
    fits: bool
    fifo_plan: fifos.FifoPlan | None = None
    sim_interval: int | None = None
    sim_latency: int | None = None

    def utilisation(self, board: Board) -> dict[str, float]:
        dev = {"LUT": board.lut, "BRAM_18K": board.bram18, "DSP": board.dsp, "URAM": board.uram}
        return {k: (self.total[k] / dev[k] if dev[k] else 0.0) for k in RES}

    def row(self, board: Board) -> dict:
        u = self.utilisation(board)
        return {"fps": round(self.fps, 1), "max_cycles": self.max_cycles, "bottleneck": self.bottleneck,
                "LUT": int(self.total["LUT"]), "BRAM_18K": int(self.total["BRAM_18K"]),
                "DSP": int(self.total["DSP"]), "LUT_pct": round(100 * u["LUT"], 1),
                "BRAM_pct": round(100 * u["BRAM_18K"], 1), "DSP_pct": round(100 * u["DSP"], 1),
                "fits": self.fits}


def evaluate(model: ModelWrapper, board: Board, budget: dict[str, float], size_joins: bool = True,
             plan: fifos.FifoPlan | None = None) -> Evaluation:
    """FINN's res_estimation + cycles of a folded graph, plus the FIFOs and converters FINN will add."""
    model = model.transform(AnnotateCycles())
    perf = model.analysis(dataflow_performance)
    res = model.analysis(lambda m: res_estimation(m, board.part))
    cycles = {n.name: int(getCustomOp(n).get_nodeattr("cycles_estimate")) for n in model.graph.node if is_hw(n)}
    nodes = {k: {**{r: v.get(r, 0) for r in RES}, "cycles": cycles.get(k, 0)} for k, v in res.items()}
    finn_total = {r: float(sum(v[r] for v in nodes.values())) for r in RES}
    if plan is None:
        if size_joins:
            plan = fifos.size_join_fifos(model, board.part)
        else:
            plan = fifos.default_fifo_plan(model, board.part)
    extra = {"LUT": float(plan.lut), "BRAM_18K": float(plan.bram), "DSP": 0.0, "URAM": 0.0}
    total = {r: finn_total[r] + extra[r] for r in RES}
    fits = all(total[r] <= budget[r] + 1e-9 for r in RES)
    max_cycles = int(perf["max_cycles"])
    return Evaluation(max_cycles=max_cycles, bottleneck=str(perf["max_cycles_node_name"]),
                      fps=board.clock_mhz * 1e6 / max_cycles,
                      latency_ms=perf["critical_path_cycles"] * board.clock_ns / 1e6, nodes=nodes,
                      finn_total=finn_total, extra=extra, total=total, budget=budget, fits=fits, fifo_plan=plan,
                      sim_interval=plan.interval if plan.interval > 0 else None,
                      sim_latency=plan.latency if plan.latency > 0 else None)


# --------------------------------------------------------------------------- the search, end to end

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
    lutram_bits = max(0.0, budget["LUT"] - need[0]) * 64
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
    for rounds in range(1, 7):
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
        reserve = np.maximum(reserve * 1.1, grow)
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


# --------------------------------------------------------------------------- FINN's target_fps baseline

def set_folding(model: ModelWrapper, board: Board, target_fps: float,
                mvau_wwidth_max: int = MVAU_WWIDTH_MAX) -> ModelWrapper:
    """FINN's SetFolding heuristic (what step_target_fps_parallelization does)."""
    cycles = max(1, int(board.clock_mhz * 1e6 / target_fps))
    m = ModelWrapper(copy.deepcopy(model.model))
    with _quiet_finn():
        return m.transform(SetFolding(cycles, mvau_wwidth_max=mvau_wwidth_max, two_pass_relaxation=True))


@contextlib.contextmanager
def _quiet_finn():
    """SetFolding warns per node that misses its target; keep that off the console."""
    import logging

    logger = logging.getLogger("finn_logger")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


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
    for _ in range(22):
        mid = math.sqrt(lo * hi)
        ev = ev_at(mid)
        if ev.fits:
            lo = mid
            if ev.fps >= best[1].fps:
                best = (mid, ev)
        else:
            hi = mid
        if hi / lo < 1.02:
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


# --------------------------------------------------------------------------- build folders

def specialised_model(out_dir: Path) -> ModelWrapper:
    from . import flow

    path = flow.intermediate_path(Path(out_dir), SPECIALISED_STEP)
    if not path.exists():
        raise BnnflowError(f"{path} is missing: build the model up to the {SPECIALISED_STEP} step first.")
    return ModelWrapper(str(path))


AUTO_FOLDING_FILE = "auto_folding.json"
FOLD_REPORT_FILE = "fold_report.json"


def build_matches(out_dir: Path, model: str, variant: str, board: Board, checkpoint: Path | None,
                  seed: int = 0) -> bool:
    """Does the build folder hold this model, variant, board and weights (checkpoint hash or seed)?"""
    from bnnflow.models.checkpoint import file_sha256

    from . import flow

    data = flow.BuildState(Path(out_dir)).data
    if (data.get("model"), data.get("variant"), data.get("board")) != (model, variant, board.name):
        return False
    if checkpoint is not None:
        return data.get("checkpoint_sha256") == file_sha256(checkpoint)
    return data.get("checkpoint") is None and data.get("seed", 0) == seed


def ensure_specialised(model: str, variant: str, board: Board, out_dir: Path, checkpoint: Path | None = None,
                       seed: int = 0, force: bool = False, console=None) -> tuple[Path, bool]:
    """A build folder with the graph saved after specialize_layers: reused when it holds the same
    model and weights, resumed when it stopped earlier, built otherwise. (folder, reused?)"""
    from rich.console import Console

    from . import flow
    from .build import BuildRequest, run_build

    console = console or Console(quiet=True)
    out_dir = Path(out_dir).resolve()
    state = flow.BuildState(out_dir)
    exists = out_dir.exists() and any(out_dir.iterdir())
    matches = exists and build_matches(out_dir, model, variant, board, checkpoint, seed)
    if matches and not force and SPECIALISED_STEP in state.done \
            and flow.intermediate_path(out_dir, SPECIALISED_STEP).exists():
        return out_dir, True
    if exists and not matches and not force:
        raise BnnflowError(f"Build folder {out_dir} holds another model or other weights: pass --force to "
                           "rebuild it there, or --build for another folder.")
    resume = matches and not force and bool(state.done) and \
        flow.STEP_NAMES.index(state.done[-1]) < flow.STEP_NAMES.index(SPECIALISED_STEP)
    req = BuildRequest(model=model, variant=variant, board=board.name, checkpoint=checkpoint, out=out_dir,
                       resume=resume, force=not resume, stop_after=SPECIALISED_STEP, seed=seed)
    run_build(req, console)
    return out_dir, False


def fold_report(result: FoldResult) -> dict:
    ev = result.evaluation
    plan = ev.fifo_plan
    return {"board": result.board.name, "limits": result.limits, "budget": result.budget,
            "max_cycles": ev.max_cycles, "fps": ev.fps, "bottleneck": ev.bottleneck, "latency_ms": ev.latency_ms,
            "finn_total": ev.finn_total, "fifo_and_dwc": ev.extra, "total": ev.total,
            "utilisation": ev.utilisation(result.board), "fits": ev.fits,
            "fifos": plan.as_dict() if plan else None, "units": result.units, "options": result.options,
            "rounds": result.rounds, "seconds": round(result.seconds, 1)}


def fold_build(out_dir: Path, board: Board, path: Path | None = None, lut_max: float | None = None,
               bram_max: float | None = None, name: str = "The model", log=None) -> tuple[FoldResult, Path]:
    """Search the folding of a build folder's specialised graph and write the JSON (default in the build)."""
    out_dir = Path(out_dir)
    result = fold(specialised_model(out_dir), board, lut_max, bram_max, name=name, log=log)
    path = Path(path) if path else out_dir / AUTO_FOLDING_FILE
    write_config(result.config, path)
    write_json(out_dir / FOLD_REPORT_FILE, {**fold_report(result), "config": str(path)})
    return result, path


# --------------------------------------------------------------------------- printing

def _folding_text(attrs: dict) -> str:
    parts = []
    for k in ("PE", "SIMD"):
        if k in attrs:
            parts.append(f"{k}={attrs[k]}")
    if attrs.get("parallel_window"):
        parts.append("parallel window")
    if "mem_mode" in attrs and "SIMD" in attrs and "PE" in attrs:
        parts.append("weights " + ("embedded" if attrs["mem_mode"] == "internal_embedded" else
                                   {"block": "BRAM", "distributed": "LUTRAM"}.get(attrs.get("ram_style"), "auto")))
    if attrs.get("resType") == "dsp":
        parts.append("DSP mult")
    if "inFIFODepths" in attrs and max(attrs["inFIFODepths"]) > fifos.DEFAULT_DEPTH:
        parts.append("in FIFOs " + "/".join(str(d) for d in attrs["inFIFODepths"]))
    return ", ".join(parts)


def print_fold(result: FoldResult, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    ev = result.evaluation
    board = result.board
    table = Table(title=f"Chosen folding for {board.name} ({board.part}, {board.clock_mhz:.0f} MHz)")
    for col in ("layer", "folding", "cycles", "LUT", "BRAM18", "DSP"):
        table.add_column(col, justify="left" if col in ("layer", "folding") else "right")
    for name, r in ev.nodes.items():
        table.add_row(name, _folding_text(result.config.get(name, {})), f"{r['cycles']:,}", f"{r['LUT']:,.0f}",
                      f"{r['BRAM_18K']:.0f}", f"{r['DSP']:.0f}")
    console.print(table)
    plan = ev.fifo_plan
    totals = Table(title="Totals against the budget")
    for col in ("", "LUT", "BRAM18", "DSP"):
        totals.add_column(col, justify="right")
    totals.add_row("FINN layer estimates", f"{ev.finn_total['LUT']:,.0f}", f"{ev.finn_total['BRAM_18K']:.0f}",
                   f"{ev.finn_total['DSP']:.0f}")
    if plan is not None:
        totals.add_row(f"join FIFOs ({sum(1 for f in plan.fifos if f.depth > 2)})", f"{plan.join_lut:,}",
                       str(plan.join_bram), "0")
        totals.add_row(f"depth-2 FIFOs ({plan.n_streams - len(plan.fifos)})", f"{plan.default_fifo_lut:,}",
                       str(plan.default_fifo_bram), "0")
        totals.add_row(f"width converters ({plan.n_dwc})", f"{plan.dwc_lut:,}", "0", "0")
    totals.add_row("total", f"{ev.total['LUT']:,.0f}", f"{ev.total['BRAM_18K']:.0f}", f"{ev.total['DSP']:.0f}")
    b = result.budget
    totals.add_row(f"budget (LUT {result.limits['LUT']:.0%}, BRAM {result.limits['BRAM']:.0%})",
                   f"{b['LUT']:,.0f}", f"{b['BRAM_18K']:.0f}", f"{b['DSP']:.0f}")
    u = ev.utilisation(board)
    totals.add_row("of device", f"{u['LUT']:.1%}", f"{u['BRAM_18K']:.1%}", f"{u['DSP']:.1%}")
    console.print(totals)
    console.print(f"Estimated {ev.fps:,.0f} FPS ({ev.max_cycles:,} cycles per image, slowest {ev.bottleneck}); "
                  f"searched {result.options:,} foldings of {result.units} units in {result.seconds:.1f} s.")
    if plan is not None and plan.interval > 0:
        console.print(f"Stream model: first image after {plan.latency:,} cycles, then one every "
                      f"{plan.interval:,} cycles with depth-2 FIFOs outside the joins.")
    for line in fifos.describe_plan(plan) if plan else []:
        console.print(f"  join FIFO: {line}")


def print_comparison(cmp: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"{cmp['model']} on {cmp['board']}: FINN target_fps vs bnnflow search")
    for col in ("method", "est. FPS", "cycles", "LUT %", "BRAM %", "DSP %", "fits"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in cmp["rows"]:
        table.add_row(r["method"], f"{r['fps']:,.0f}", f"{r['max_cycles']:,}", f"{r['LUT_pct']:.1f}",
                      f"{r['BRAM_pct']:.1f}", f"{r['DSP_pct']:.1f}", "yes" if r["fits"] else "NO")
    console.print(table)
    if cmp.get("speedup_vs_best_baseline"):
        console.print(f"search / best fitting SetFolding: {cmp['speedup_vs_best_baseline']:.2f}x")


def cmd_fold(args) -> int:
    """`bnnflow fold MODEL`: build to specialize_layers, search, print, write the folding config."""
    from rich.console import Console

    from bnnflow.hw.boards import get_board
    from bnnflow.models.zoo import get_variant

    from .build import default_out

    console = Console()
    get_variant(args.model, args.variant)
    board = get_board(args.board)
    board.budget(args.lut_max, args.bram_max)  # validates the limits
    out_dir = Path(args.build or default_out(args.model, args.variant, board.name))
    with console.status(f"Building {args.model}/{args.variant} up to {SPECIALISED_STEP}..."):
        out_dir, reused = ensure_specialised(args.model, args.variant, board, out_dir, args.checkpoint, args.seed,
                                             args.force, Console(quiet=True))
    console.print(f"{'Reusing' if reused else 'Built'} the specialised graph in {out_dir}.")
    name = f"{args.model}/{args.variant}"
    with console.status("Searching the folding..."):
        result, path = fold_build(out_dir, board, args.out, args.lut_max, args.bram_max, name=name)
    print_fold(result, console)
    console.print(f"Wrote {path}: 'bnnflow build {args.model} --variant {args.variant} --folding {path}' "
                  "applies it (edit PE/SIMD there to tune by hand).")
    if args.compare:
        with console.status("Running FINN's target_fps heuristic for comparison..."):
            cmp = compare_with_target_fps(specialised_model(out_dir), board, args.lut_max, args.bram_max, name=name)
        write_json(out_dir / "fold_comparison.json", cmp)
        print_comparison(cmp, console)
    return 0


def load_config(path: Path) -> dict:
    return json.loads(Path(path).read_text())


__all__ = ["fold", "fold_build", "compare_with_target_fps", "search", "build_units", "evaluate", "FoldResult",
           "Evaluation", "folding_config", "write_config", "print_fold", "print_comparison"]
