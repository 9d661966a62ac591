"""Deadlock-free joins: size the FIFO on the short branch of every residual add and dense concat.

A residual block forks its input (DuplicateStreams) into a long branch (threshold, padding,
sliding window, MVAU, threshold) and a short one (the identity, or pool + 1x1 conv), and joins
them again (ElementwiseAdd; StreamingConcat in BinaryDenseNet). The sliding-window generator
must take in (K-1) rows + K pixels before it emits its first window, so the fork has to push
that much into the short branch before the join can take anything from it: with FINN's
default depth-2 FIFOs the fork blocks, the window generator starves and the accelerator
deadlocks. FINN sizes these FIFOs by RTL simulation (Vivado); this module does it without.

Why a cycle-level model and not a closed-form bound per join: the bound "tokens the fork
emits before the long branch delivers its first output" gets the deadlock threshold right,
but whether a FIFO of that depth also runs without stalls depends on the burst pattern of
every node on both branches (an MVAU with PE < MH emits one output every SIMD-fold cycles,
a window generator bursts K*K outputs per input pixel, a concat drains one input then the
other), on the back-pressure of the depth-2 FIFOs FINN puts everywhere else, and on joins that
follow each other within a few layers. A token-level simulation of the whole stream graph
captures all of that with no extra modelling per case and answers both questions.

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
Simulating two frames gives the first-frame latency, the steady-state cycles per frame,
deadlocks (no process can move) and the largest occupancy of every FIFO. A first, short run
with the join FIFOs unbounded tells which input each join waits on while another input holds
data (the long branch); a second run keeps the long input at FINN's depth 2 (so back-pressure
from below the join still reaches the fork through the long branch) and the short inputs
unbounded. A short FIFO's depth is its largest occupancy there plus one, so that it never
fills and the schedule is exactly that run's, plus PIPELINE_SLACK elements per node of the
other branch for the pipeline latency of the real hardware, which the model leaves out. The
depths become the join node's `inFIFODepths`, which FINN 1.6.1's InsertFIFO reads when it
creates the FIFOs (the max of the producer's outFIFODepths and the consumer's inFIFODepths)
and which the folding config carries; their memory (FINN's StreamingFIFO estimate) is counted
in the folding search's budget, as are FINN's depth-2 FIFOs on every other stream and the
width converters InsertDWC will add.

What the model does not promise: FINN's throughput estimate assumes every FIFO is deep enough;
with depth 2 outside the joins the model usually shows stalls (it reports the steady-state
interval next to FINN's max cycles). With Vivado, FINN's own rtlsim-based step sizes them all.

Modules: fifo_graph builds the stream graph, fifo_sim runs it; this one sizes and costs the FIFOs
and still exports the names of both, so callers import everything from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from bnnflow import compat
from bnnflow.errors import BnnflowError

compat.finn_ready()

from onnx import helper  # noqa: E402
from qonnx.custom_op.registry import getCustomOp  # noqa: E402

# the stream graph and the simulator live in their own modules; their names stay importable from here
from .fifo_graph import (  # noqa: E402, F401
    DEFAULT_DEPTH, FORK_OPS, JOIN_OPS, Edge, Proc, StreamGraph, base_op, branch_of, is_hw, stream_graph,
)
from .fifo_sim import FRAMES, UNBOUNDED, SimResult, StreamSim, simulate  # noqa: E402, F401

PIPELINE_SLACK = 8  # elements per node of the other branch, for the pipeline latency the model omits
SIDES_PROBE_FRACTION = 4  # join_sides stops once every join has read 1/4 of a frame on each input


# --------------------------------------------------------------------------- join FIFO sizing

@dataclass
class JoinFifo:
    join: str  # ElementwiseAdd / StreamingConcat node
    port: int  # input index of the join node
    producer: str | None
    fork: str | None  # the DuplicateStreams the branch comes from
    depth: int
    width: int  # bits
    occupancy: int  # largest occupancy with an unbounded FIFO
    branch_nodes: int  # nodes between fork and join on this input
    short: bool  # the branch that has to wait (the larger occupancy of the join's inputs)
    lut: int = 0
    bram: int = 0


@dataclass
class FifoPlan:
    fifos: list[JoinFifo]
    latency: int
    interval: int
    ideal_interval: int  # FINN's max get_exp_cycles()
    default_fifo_lut: int  # FINN's depth-2 FIFOs on every other stream
    default_fifo_bram: int
    dwc_lut: int  # data-width converters FINN's InsertDWC will add
    n_dwc: int
    n_streams: int

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
        """join node -> inFIFODepths."""
        out: dict[str, list[int]] = {}
        for f in self.fifos:
            out.setdefault(f.join, [])
        for join in out:
            ports = {f.port: f.depth for f in self.fifos if f.join == join}
            out[join] = [ports.get(i, DEFAULT_DEPTH) for i in range(max(ports) + 1)]
        return out

    def config(self) -> dict[str, dict]:
        """The folding-config entries that carry the depths (FINN's inFIFODepths)."""
        return {join: {"inFIFODepths": d} for join, d in self.depths().items()}

    def as_dict(self) -> dict:
        return {"latency_cycles": self.latency, "interval_cycles": self.interval,
                "ideal_interval_cycles": self.ideal_interval, "join_fifos": [f.__dict__ for f in self.fifos],
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


def _plan(g: StreamGraph, need: dict[int, int], ref: SimResult | None, fpgapart: str) -> FifoPlan:
    fifos: list[JoinFifo] = []
    for e, depth in need.items():
        edge = g.edges[e]
        fork, n_between = branch_of(g, e)
        occ = int(ref.max_occupancy[e]) if ref is not None else 0
        lut, bram = fifo_cost(depth, edge.width, fpgapart)
        fifos.append(JoinFifo(join=edge.dst, port=edge.dst_port, producer=edge.src, fork=fork, depth=depth,
                              width=edge.width, occupancy=occ, branch_nodes=n_between,
                              short=depth > DEFAULT_DEPTH, lut=lut, bram=bram))
    d_lut = d_bram = streams = 0
    for edge in g.edges:
        if edge.src is None or edge.dst is None or edge.index in need:
            continue
        streams += 1
        lut, bram = fifo_cost(DEFAULT_DEPTH, edge.width, fpgapart)
        d_lut, d_bram = d_lut + lut, d_bram + bram
    dwcs = [p for p in g.procs if p.virtual]
    dwc_lut = sum(dwc_cost(g.edges[p.ins[0]].width, g.edges[p.outs[0]].width, fpgapart) for p in dwcs)
    ideal = max(c for name, c in g.exp_cycles.items() if not name.startswith("DWC("))
    return FifoPlan(fifos, ref.latency if ref else -1, ref.interval if ref else -1, ideal, d_lut, d_bram,
                    dwc_lut, len(dwcs), streams + len(fifos))


def size_join_fifos(model, fpgapart: str, frames: int = FRAMES, verify: bool = False) -> FifoPlan:
    """Depth of every join FIFO from the stream model, and what all FIFOs and converters cost."""
    g = stream_graph(model)
    if not g.join_edges():
        return _plan(g, {}, None, fpgapart)
    ref, need = _stall_free_depths(g, frames)
    if verify:
        check = simulate(g, need, frames)
        if check.deadlock or check.interval > ref.interval:
            raise BnnflowError("The sized join FIFOs did not reproduce the unbounded schedule in the stream "
                               "model: this is a bug in bnnflow's FIFO sizing, please report it.")
    return _plan(g, need, ref, fpgapart)


def default_fifo_plan(model, fpgapart: str) -> FifoPlan:
    """What FINN's depth-2 FIFOs (joins included) and width converters cost, without simulating."""
    g = stream_graph(model, programs=False)
    return _plan(g, {e: DEFAULT_DEPTH for e in g.join_edges()}, None, fpgapart)


def graph_fifo_plan(model, fpgapart: str) -> FifoPlan:
    """What the FIFOs (join depths as the graph's inFIFODepths/outFIFODepths set them) and width
    converters FINN will insert into this folded graph cost, without simulating."""
    g = stream_graph(model, programs=False)
    depths = depths_on_graph(model, g)
    return _plan(g, {e: depths[e] for e in g.join_edges()}, None, fpgapart)


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


@dataclass
class JoinCheck:
    ok: bool
    message: str
    latency: int
    interval: int
    reference_interval: int
    deadlock: bool


def check_join_fifos(model, depths: dict[str, list[int]] | None = None, frames: int = FRAMES,
                     raise_error: bool = True, reference: FifoPlan | None = None) -> JoinCheck:
    """Simulate the graph with its join FIFOs (the nodes' inFIFODepths, or `depths`: join -> list).

    Fails (BnnflowError) when the graph deadlocks or a join FIFO makes it slower than with
    unbounded short-branch FIFOs; the message names the join, its depth and the depth it needs.
    `reference`: the plan of this folding from size_join_fifos (saves re-deriving it).
    """
    g = stream_graph(model)
    on_graph = _join_depths(model, g, depths)
    joins = g.join_edges()
    sim = simulate(g, {e: on_graph[e] for e in joins}, frames)
    need, ref_interval = _needed_depths(g, joins, frames, reference)
    result = _verdict(g, sim, on_graph, need, ref_interval)
    if raise_error and not result.ok:
        raise BnnflowError(result.message)
    return result


def _join_depths(model, g: StreamGraph, depths: dict[str, list[int]] | None) -> dict[int, int]:
    """Every stream's depth on the graph, the join inputs overridden by `depths` (join -> list)."""
    on_graph = depths_on_graph(model, g)
    if depths is not None:
        for e in g.join_edges():
            edge = g.edges[e]
            if edge.dst in depths:
                d = depths[edge.dst]
                on_graph[e] = max(DEFAULT_DEPTH, d[min(edge.dst_port, len(d) - 1)])
    return on_graph


def _needed_depths(g: StreamGraph, joins: list[int], frames: int,
                   reference: FifoPlan | None) -> tuple[dict[int, int], int]:
    """(join edge -> depth it needs, stall-free interval): from the plan, or sized afresh."""
    if reference is not None and reference.interval > 0:
        planned = {(f.join, f.port): f.depth for f in reference.fifos}
        need = {e: planned.get((g.edges[e].dst, g.edges[e].dst_port), DEFAULT_DEPTH) for e in joins}
        return need, reference.interval
    ref, need = _stall_free_depths(g, frames)
    return need, ref.interval


def _verdict(g: StreamGraph, sim: SimResult, on_graph: dict[int, int], need: dict[int, int],
             ref_interval: int) -> JoinCheck:
    joins = g.join_edges()

    def describe(e: int) -> str:
        edge = g.edges[e]
        fork, _ = branch_of(g, e)
        origin = f"fed by {edge.src}" + (f" from {fork}" if fork and fork != edge.src else "")
        return (f"the FIFO on input {edge.dst_port} of {edge.dst} ({origin}) has depth {on_graph[e]} "
                f"but needs {need[e]}")

    short = [e for e in joins if on_graph[e] < need[e]]
    if sim.deadlock:
        culprits = [e for e in sim.full_edges if e in joins] or short
        what = "; ".join(describe(e) for e in culprits) or "no join FIFO is full"
        msg = (f"The dataflow graph deadlocks at cycle {sim.cycles:,} of the stream model: {what}, so "
               "re-run 'bnnflow fold' or raise inFIFODepths in the folding config.")
        return JoinCheck(False, msg, -1, -1, ref_interval, True)
    if sim.interval > ref_interval:
        what = "; ".join(describe(e) for e in short) or "a join FIFO fills"
        msg = (f"The join FIFOs stall the pipeline: {sim.interval:,} instead of {ref_interval:,} cycles per "
               f"frame because {what}, so re-run 'bnnflow fold' or raise inFIFODepths in the folding config.")
        return JoinCheck(False, msg, sim.latency, sim.interval, ref_interval, False)
    return JoinCheck(True, f"{len(joins)} join FIFOs: no deadlock, no stall ({sim.interval:,} cycles "
                           f"per frame, first frame after {sim.latency:,} cycles).",
                     sim.latency, sim.interval, ref_interval, False)


def apply_fifo_depths(model, plan: FifoPlan):
    """Write the join depths into the join nodes' inFIFODepths (what FINN's InsertFIFO reads)."""
    by_name = {n.name: n for n in model.graph.node}
    for join, d in plan.depths().items():
        inst = getCustomOp(by_name[join])
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


__all__ = ["stream_graph", "simulate", "size_join_fifos", "default_fifo_plan", "graph_fifo_plan", "check_join_fifos",
           "apply_fifo_depths", "depths_on_graph", "describe_plan", "join_sides", "FifoPlan", "JoinFifo", "JoinCheck",
           "fifo_cost", "dwc_cost", "DEFAULT_DEPTH", "PIPELINE_SLACK", "FRAMES", "UNBOUNDED", "JOIN_OPS", "FORK_OPS",
           "Edge", "Proc", "StreamGraph", "SimResult", "StreamSim", "base_op", "is_hw", "branch_of"]
