"""FIFO sizing: every stream of a folded FINN graph sized by a cycle-level model of the stream graph.

A residual block forks its input (DuplicateStreams) into a long branch (threshold, padding,
sliding window, MVAU, threshold) and a short one, and joins them again (ElementwiseAdd;
StreamingConcat in BinaryDenseNet). The sliding-window generator takes in (K-1) rows + K pixels
before its first window, so with FINN's default depth-2 FIFOs the fork blocks and the design
deadlocks; and on every other stream, depth 2 makes a producer that writes in bursts (a window
generator emits K*K outputs per pixel, an MVAU reads its SIMD-folds in its first PE-fold only)
stall its neighbours, so the design runs slower than FINN's estimate (which assumes no stalls).
FINN sizes FIFOs by RTL simulation (Vivado); this module does it without.

The model (one FINN node = one process, one stream = one FIFO):
* every node with one control flow (MVAU, thresholding, padding, pools, duplicate/add/concat,
  label select, data-width converters) runs a per-frame program of "steps", one step per
  clock cycle, exactly FINN's get_exp_cycles() steps per frame; a step may read one element
  from some inputs and write one to some outputs (e.g. the MVAU reads its SIMD-folds only in
  the first of its PE-folds, as the HLS loop does, and writes at the end of every SIMD-fold)
  and stalls while an input is empty or an output full;
* the sliding-window generator (ConvolutionInputGenerator_rtl) reads and writes concurrently:
  output element j waits for the last input element its window needs, and input element q
  waits for room in its line buffer (FINN's get_buffer_depth()), i.e. until the windows have
  moved past element q - depth; so it buffers (K-1) rows + K pixels before its first window;
* a FIFO of depth D accepts a write while it holds fewer than D elements at the start of the
  cycle, and an element written in cycle t can be read from t+1 on (FINN's fifo.sv);
* weights stream from the MVAU's own memory, the input never runs dry, the output never blocks.
A run of a few frames gives the first-frame latency, the steady-state cycles per frame,
deadlocks (no process can move) and the largest occupancy of every FIFO (fifo_sim; its cycle
loop runs in C, fifo_kernel).

Sizing (fifo_sizing): every stream gets the smallest depth at which the design keeps the frame
interval of the run with all FIFOs unbounded, by shrinking upper bounds from a paced run, one
simulation per try. The short-branch FIFO of every join then gets PIPELINE_SLACK elements per
node of the other branch on top, for the pipeline latency of the real hardware, which the model
leaves out (a deadlock there would be fatal; elsewhere a shortfall only costs a few cycles).
The depths become the consumers' `inFIFODepths`, which FINN 1.6.1's InsertFIFO reads (the max of
the producer's outFIFODepths and the consumer's inFIFODepths) and the folding config carries;
their memory (FINN's StreamingFIFO estimate) and the width converters InsertDWC will add are
counted in the folding search's budget and in the estimate summary. size_join_fifos(...,
every_fifo=False) still sizes the joins alone (depth 2 elsewhere), as before.

With Vivado, FINN's own rtlsim-based set_fifo_depths step re-sizes them all in the build.
Modules: fifo_graph builds the stream graph, fifo_sim runs it, fifo_sizing sizes it, fifo_check
checks a graph's depths; this one builds the plans and costs and exports the names of all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bnnflow import compat
from bnnflow.errors import BnnflowError

compat.finn_ready()

from onnx import helper  # noqa: E402
from qonnx.custom_op.registry import getCustomOp  # noqa: E402

# the stream graph and the simulator live in their own modules; their names stay importable from here
from .fifo_graph import (  # noqa: E402, F401
    DEFAULT_DEPTH, DWC_PREFIX, FORK_OPS, JOIN_OPS, Edge, Proc, StreamGraph, base_op, branch_of, is_hw, stream_graph,
)
from .fifo_sim import FRAMES, UNBOUNDED, SimResult, StreamSim, simulate  # noqa: E402, F401
from .fifo_sizing import (  # noqa: E402, F401
    REPORT_FRAMES, SIZING_BUDGET, SIZING_FRAMES, Sizing, fixed_edges, inner_edges, modelled_cycles, size_all,
)

FPS_TOLERANCE = 1e-6  # the stream model's FPS counts as FINN's when equal up to float rounding
PIPELINE_SLACK = 8  # elements per node of the other branch, for the pipeline latency the model omits
SIDES_PROBE_FRACTION = 4  # join_sides stops once every join has read 1/4 of a frame on each input


# --------------------------------------------------------------------------- plans and costs

@dataclass
class JoinFifo:
    join: str  # ElementwiseAdd / StreamingConcat node
    port: int  # input index of the join node
    producer: str | None
    fork: str | None  # the DuplicateStreams the branch comes from
    depth: int
    width: int  # bits
    occupancy: int  # largest occupancy in the plan's run (joins alone: with an unbounded short FIFO)
    branch_nodes: int  # nodes between fork and join on this input
    short: bool  # the branch that has to wait (the larger occupancy of the join's inputs)
    lut: int = 0
    bram: int = 0
    minimum: int = 0  # the stream model's least depth (every_fifo sizing); depth adds the slack


@dataclass
class StreamFifo:
    """The FIFO on a stream that is not a join input, as every_fifo sizing sets it."""

    src: str
    dst: str
    dst_port: int
    depth: int  # FINN's InsertFIFO depth: the consumer's inFIFODepths (2 into a width converter)
    width: int
    peak: int  # largest occupancy in the sized run
    lut: int = 0
    bram: int = 0


@dataclass
class FifoPlan:
    fifos: list[JoinFifo]
    latency: int  # first frame's last output, in the stream model (-1: not simulated)
    interval: int  # steady-state cycles per frame in the stream model (-1: not simulated)
    ideal_interval: int  # FINN's max get_exp_cycles()
    default_fifo_lut: int  # the FIFOs on every other stream (FINN's depth 2 unless every_fifo)
    default_fifo_bram: int
    dwc_lut: int  # data-width converters FINN's InsertDWC will add
    n_dwc: int
    n_streams: int
    streams: list[StreamFifo] = field(default_factory=list)  # every other stream (every_fifo sizing)
    every_fifo: bool = False  # every stream sized by the model, not the joins alone
    target_interval: int = -1  # the unbounded run's interval the sizing keeps (SIZING_FRAMES frames)
    free_interval: int = -1  # the same with the streams into width converters unbounded too
    minimal: bool = False  # every depth was shown minimal in the model (within the time budget)
    sims: int = 0
    seconds: float = 0.0

    @property
    def join_lut(self) -> int:
        return sum(f.lut for f in self.fifos)

    @property
    def join_bram(self) -> int:
        return sum(f.bram for f in self.fifos)

    @property
    def lut(self) -> int:
        return self.join_lut + self.default_fifo_lut + self.dwc_lut

    @property
    def bram(self) -> int:
        return self.join_bram + self.default_fifo_bram

    def depths(self) -> dict[str, list[int]]:
        """node -> inFIFODepths: the join nodes, and with every_fifo every node a stream enters."""
        ports: dict[str, dict[int, int]] = {}
        for f in self.fifos:
            ports.setdefault(f.join, {})[f.port] = f.depth
        for s in self.streams:
            if not s.dst.startswith(DWC_PREFIX):
                ports.setdefault(s.dst, {})[s.dst_port] = s.depth
        return {node: [p.get(i, DEFAULT_DEPTH) for i in range(max(p) + 1)] for node, p in ports.items()}

    def config(self) -> dict[str, dict]:
        """The folding-config entries that carry the depths (FINN's inFIFODepths)."""
        return {node: {"inFIFODepths": d} for node, d in self.depths().items()}

    def as_dict(self) -> dict:
        return {"latency_cycles": self.latency, "interval_cycles": self.interval,
                "ideal_interval_cycles": self.ideal_interval, "every_fifo": self.every_fifo,
                "target_interval_cycles": self.target_interval, "free_interval_cycles": self.free_interval,
                "minimal": self.minimal, "simulations": self.sims, "seconds": round(self.seconds, 2),
                "join_fifos": [f.__dict__ for f in self.fifos], "fifos": [f.__dict__ for f in self.streams],
                "join_fifo_lut": self.join_lut, "join_fifo_bram18": self.join_bram,
                "default_fifo_lut": self.default_fifo_lut, "default_fifo_bram18": self.default_fifo_bram,
                "dwc_lut": self.dwc_lut, "dwcs": self.n_dwc, "streams": self.n_streams}


_FIFO_COST: dict[tuple[int, int], tuple[int, int]] = {}
_DWC_COST: dict[tuple[int, int], int] = {}


def fifo_cost(depth: int, width: int, fpgapart: str) -> tuple[int, int]:
    """(LUT, BRAM18) of a StreamingFIFO_rtl of this depth and width, by FINN's own estimate."""
    key = (int(depth), int(width))
    if key not in _FIFO_COST:
        node = helper.make_node("StreamingFIFO_rtl", ["i"], ["o"], domain="finn.custom_op.fpgadataflow.rtl",
                                backend="fpgadataflow", depth=int(depth), folded_shape=[1, 1, int(width)],
                                normal_shape=[1, int(width)], dataType="BINARY", ram_style="auto")
        inst = getCustomOp(node)
        _FIFO_COST[key] = (int(inst.lut_estimation(fpgapart)), int(inst.bram_estimation(fpgapart)))
    return _FIFO_COST[key]


def dwc_cost(in_width: int, out_width: int, fpgapart: str) -> int:
    """LUTs of the data-width converter FINN inserts between two widths, by FINN's own estimate."""
    key = (int(in_width), int(out_width))
    if key not in _DWC_COST:
        node = helper.make_node("StreamingDataWidthConverter_hls", ["i"], ["o"],
                                domain="finn.custom_op.fpgadataflow.hls", backend="fpgadataflow",
                                inShape=[1, int(in_width)], outShape=[1, int(out_width)],
                                inWidth=int(in_width), outWidth=int(out_width), dataType="BINARY")
        _DWC_COST[key] = int(getCustomOp(node).lut_estimation(fpgapart))
    return _DWC_COST[key]


_branch = branch_of  # the old private name


def join_sides(g: StreamGraph) -> dict[int, bool]:
    """Join input edge -> True on a short branch: the join waits on its long branch, not on these."""
    joins = g.join_edges()
    # the start of the first frame decides it: stop once every join has taken a quarter of a frame
    sim = simulate(g, {e: None for e in joins}, frames=1, track_waits=True,
                   stop_after_reads={e: max(1, g.edges[e].tokens // SIDES_PROBE_FRACTION) for e in joins})
    short: dict[int, bool] = {}
    for p in g.procs:
        if base_op(p.op_type) in JOIN_OPS and len(p.ins) > 1:
            long = max(p.ins, key=lambda e: (int(sim.waits[e]), -int(sim.max_occupancy[e])))
            for e in p.ins:
                short[e] = e != long
    return short


def _stall_free_depths(g: StreamGraph, frames: int) -> tuple[SimResult, dict[int, int]]:
    """Short-branch FIFOs unbounded, long ones at FINN's default: their peak occupancy + 1 + slack.

    Keeping the long input bounded keeps the back-pressure from below the join flowing up the
    long branch to the fork, so the short FIFO only fills as far as the join really needs.
    """
    short = join_sides(g)
    ref = simulate(g, {e: (None if s else DEFAULT_DEPTH) for e, s in short.items()}, frames)
    if ref.deadlock:
        names = ", ".join(sorted({g.consumer(e).name for e in ref.empty_waits if g.consumer(e)}))
        raise BnnflowError(f"The dataflow graph deadlocks even with unbounded short-branch FIFOs (waiting: "
                           f"{names}): the folding is inconsistent, so rebuild it with 'bnnflow fold'.")
    need: dict[int, int] = {}
    for e, is_short in short.items():
        if not is_short:
            need[e] = DEFAULT_DEPTH
            continue
        join = g.consumer(e)
        other_len = max([branch_of(g, o)[1] for o in join.ins if o != e] + [0])
        need[e] = max(DEFAULT_DEPTH, int(ref.max_occupancy[e]) + 1 + PIPELINE_SLACK * (other_len + 1))
    return ref, need


def _plan(g: StreamGraph, need: dict[int, int], ref: SimResult | None, fpgapart: str,
          others: dict[int, int] | None = None, short: dict[int, bool] | None = None,
          minimum: dict[int, int] | None = None) -> FifoPlan:
    """The plan of join depths `need` (and `others`: every other stream's depth, default 2), costed."""
    fifos: list[JoinFifo] = []
    for e, depth in need.items():
        edge = g.edges[e]
        fork, n_between = branch_of(g, e)
        occ = int(ref.max_occupancy[e]) if ref is not None else 0
        lut, bram = fifo_cost(depth, edge.width, fpgapart)
        fifos.append(JoinFifo(join=edge.dst, port=edge.dst_port, producer=edge.src, fork=fork, depth=depth,
                              width=edge.width, occupancy=occ, branch_nodes=n_between,
                              short=short[e] if short else depth > DEFAULT_DEPTH, lut=lut, bram=bram,
                              minimum=(minimum or {}).get(e, 0)))
    streams: list[StreamFifo] = []
    d_lut = d_bram = n_other = 0
    for e in inner_edges(g):
        if e in need:
            continue
        edge, depth = g.edges[e], (others or {}).get(e, DEFAULT_DEPTH)
        lut, bram = fifo_cost(depth, edge.width, fpgapart)
        d_lut, d_bram, n_other = d_lut + lut, d_bram + bram, n_other + 1
        if others is not None:
            streams.append(StreamFifo(edge.src, edge.dst, edge.dst_port, depth, edge.width,
                                      int(ref.max_occupancy[e]) if ref is not None else 0, lut, bram))
    dwcs = [p for p in g.procs if p.virtual]
    dwc_lut = sum(dwc_cost(g.edges[p.ins[0]].width, g.edges[p.outs[0]].width, fpgapart) for p in dwcs)
    ideal = max(c for name, c in g.exp_cycles.items() if not name.startswith(DWC_PREFIX))
    return FifoPlan(fifos, ref.latency if ref else -1, ref.interval if ref else -1, ideal, d_lut, d_bram,
                    dwc_lut, len(dwcs), n_other + len(fifos), streams)


def size_join_fifos(model, fpgapart: str, frames: int = FRAMES, verify: bool = False, every_fifo: bool = True,
                    budget: int = SIZING_BUDGET) -> FifoPlan:
    """The FIFO depths from the stream model (every stream, or with every_fifo=False the join inputs
    alone, depth 2 elsewhere), and what all FIFOs and converters cost."""
    g = stream_graph(model)
    if every_fifo:
        return _size_every_fifo(g, fpgapart, budget)
    if not g.join_edges():
        return _plan(g, {}, None, fpgapart)
    ref, need = _stall_free_depths(g, frames)
    if verify:
        check = simulate(g, need, frames)
        if check.deadlock or check.interval > ref.interval:
            raise BnnflowError("The sized join FIFOs did not reproduce the unbounded schedule in the stream "
                               "model: this is a bug in bnnflow's FIFO sizing, please report it.")
    return _plan(g, need, ref, fpgapart)


def size_fifos(model, fpgapart: str, budget: int = SIZING_BUDGET) -> FifoPlan:
    """Every FIFO of a folded graph sized by the stream model (size_join_fifos' default)."""
    return size_join_fifos(model, fpgapart, budget=budget)


def _size_every_fifo(g: StreamGraph, fpgapart: str, budget: int) -> FifoPlan:
    """The model's least depths, the short join inputs with the pipeline slack on top, run again."""
    sizing = size_all(g, budget)
    depths = dict(sizing.depths)
    joins = g.join_edges()
    short = join_sides(g) if joins else {}
    for e in joins:
        if short[e]:
            other_len = max([branch_of(g, o)[1] for o in g.consumer(e).ins if o != e] + [0])
            depths[e] += PIPELINE_SLACK * (other_len + 1)
    final = simulate(g, depths, REPORT_FRAMES) if depths != sizing.depths else sizing.result
    if final.deadlock:
        raise BnnflowError("The sized FIFOs deadlock the stream model: this is a bug in bnnflow's FIFO sizing, "
                           "please report it.")
    plan = _plan(g, {e: depths[e] for e in joins}, final, fpgapart,
                 others={e: d for e, d in depths.items() if e not in set(joins)}, short=short,
                 minimum=sizing.depths)
    plan.every_fifo, plan.minimal, plan.sims = True, sizing.minimal, sizing.sims + (final is not sizing.result)
    plan.target_interval, plan.free_interval, plan.seconds = sizing.target, sizing.free_interval, sizing.seconds
    return plan


def default_fifo_plan(model, fpgapart: str) -> FifoPlan:
    """What FINN's depth-2 FIFOs (joins included) and width converters cost, without simulating."""
    g = stream_graph(model, programs=False)
    return _plan(g, {e: DEFAULT_DEPTH for e in g.join_edges()}, None, fpgapart)


def graph_fifo_plan(model, fpgapart: str) -> FifoPlan:
    """What the FIFOs (every stream at the depth the graph's inFIFODepths/outFIFODepths give it) and
    width converters FINN will insert into this folded graph cost, without simulating."""
    g = stream_graph(model, programs=False)
    depths = depths_on_graph(model, g)
    joins = set(g.join_edges())
    return _plan(g, {e: depths[e] for e in joins}, None, fpgapart,
                 others={e: depths[e] for e in inner_edges(g) if e not in joins})


def simulate_graph(model, frames: int = REPORT_FRAMES) -> SimResult:
    """The stream model of a folded graph with the FIFO depths on it (the build's FIFOs)."""
    g = stream_graph(model)
    on_graph = depths_on_graph(model, g)
    return simulate(g, {e: on_graph[e] for e in inner_edges(g)}, frames)


def depths_on_graph(model, g: StreamGraph) -> dict[int, int]:
    """The FIFO depth FINN's InsertFIFO will give each stream: max(outFIFODepths, inFIFODepths)."""
    insts = {n.name: getCustomOp(n) for n in model.graph.node if is_hw(n)}
    depths: dict[int, int] = {}
    for e in g.edges:
        d = DEFAULT_DEPTH
        if e.src in insts:
            out_d = list(insts[e.src].get_nodeattr("outFIFODepths") or [DEFAULT_DEPTH])
            d = max(d, out_d[min(e.src_port, len(out_d) - 1)])
        if e.dst in insts:
            in_d = list(insts[e.dst].get_nodeattr("inFIFODepths") or [DEFAULT_DEPTH])
            d = max(d, in_d[min(e.dst_port, len(in_d) - 1)])
        depths[e.index] = d
    return depths


def apply_fifo_depths(model, plan: FifoPlan):
    """Write the depths into the consumers' inFIFODepths (what FINN's InsertFIFO reads)."""
    by_name = {n.name: n for n in model.graph.node}
    for node, d in plan.depths().items():
        inst = getCustomOp(by_name[node])
        cur = list(inst.get_nodeattr("inFIFODepths") or [])
        cur = (cur + [DEFAULT_DEPTH] * len(d))[: max(len(d), len(cur))]
        for i, v in enumerate(d):
            cur[i] = max(v, DEFAULT_DEPTH)
        inst.set_nodeattr("inFIFODepths", cur)
    return model


def describe_plan(plan: FifoPlan) -> list[str]:
    lines = []
    for f in plan.fifos:
        if f.depth <= DEFAULT_DEPTH:
            continue
        lines.append(f"{f.join} input {f.port} ({'short' if f.short else 'long'} branch from {f.fork or '?'}): "
                     f"depth {f.depth} x {f.width} bit (peak {f.occupancy}), {f.lut} LUT, {f.bram} BRAM18")
    return lines


def stream_performance(interval: int, latency: int, board) -> tuple[float, float]:
    """(FPS, first-image latency in ms) on `board` of a stream-model run's interval and latency in cycles."""
    return board.clock_mhz * 1e6 / interval, latency * board.clock_ns / 1e6


def below_estimate(sim_fps: float, finn_fps: float) -> bool:
    """The stream model runs slower than FINN's stall-free estimate (beyond float rounding)."""
    return sim_fps < finn_fps * (1 - FPS_TOLERANCE)


def fifo_summary(plan: FifoPlan) -> str | None:
    """One line on the sizing of every FIFO (None for a join-only or unsized plan)."""
    if not plan.every_fifo:
        return None
    deep = [f for f in plan.streams if f.depth > DEFAULT_DEPTH]
    lut = sum(f.lut for f in plan.streams)
    bram = sum(f.bram for f in plan.streams)
    state = "each the least that keeps it" if plan.minimal else "valid, not all shown minimal within the budget"
    return (f"every FIFO sized by the stream model for {plan.target_interval:,} cycles/frame ({state}): "
            f"{len(deep)} of {len(plan.streams)} non-join FIFOs deeper than 2 ({lut:,} LUT, {bram} BRAM18), "
            f"{plan.sims} simulations in {plan.seconds:.1f} s.")


from .fifo_check import JoinCheck, check_join_fifos  # noqa: E402, F401  (kept importable from here)

__all__ = ["stream_graph", "simulate", "size_join_fifos", "size_fifos", "default_fifo_plan", "graph_fifo_plan",
           "simulate_graph", "check_join_fifos", "apply_fifo_depths", "depths_on_graph", "describe_plan",
           "fifo_summary", "join_sides", "modelled_cycles", "size_all", "FifoPlan", "JoinFifo", "StreamFifo",
           "JoinCheck", "Sizing", "fifo_cost", "dwc_cost", "DEFAULT_DEPTH", "PIPELINE_SLACK", "FRAMES",
           "SIZING_FRAMES", "REPORT_FRAMES", "UNBOUNDED", "JOIN_OPS", "FORK_OPS", "Edge", "Proc", "StreamGraph",
           "SimResult", "StreamSim", "base_op", "is_hw", "branch_of", "inner_edges", "fixed_edges"]
