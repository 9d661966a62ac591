"""Size every FIFO of the stream graph: the smallest depths that keep the unbounded throughput.

The model's schedule is the earliest one the FIFO rules allow (every process moves as soon as
it can), and that is monotone: a deeper FIFO never makes an event later. So a run with every
FIFO unbounded sets the throughput to keep (its last frame interval), and a FIFO as deep as its
peak occupancy in some run plus one reproduces that run exactly. The upper bounds come from a
run whose input is paced at the target interval (so no layer runs frames ahead of the slowest
one, which the unpaced run does and which fills the FIFOs in front of it); the search then
shrinks them: one try with every FIFO at FINN's depth 2, then per FIFO, the most memory first, a
search down from its bound (after every run that keeps the target, each FIFO also drops to its
peak there plus one, for free), and last passes that re-try depth - 1 on every FIFO until none
can shrink. Each try is one simulation of the whole graph (fifo_kernel: milliseconds for the
tiny variants, about a third of a second for ResNetE default); a fixed budget bounds them.

The streams into a width converter FINN inserts stay at depth 2: InsertFIFO takes their depth
from the producer's outFIFODepths, which the folding config does not carry (it writes the
consumers' inFIFODepths); the target is then the unbounded run with those at depth 2, and the
run with every FIFO unbounded is reported beside it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

from bnnflow.errors import BnnflowError

from .fifo_graph import DEFAULT_DEPTH, Edge, Proc, StreamGraph, _generic
from .fifo_sim import SimResult, simulate

SIZING_FRAMES = 3  # frames per try: the last interval is past the first frame's transient
REPORT_FRAMES = 4  # frames of the final run, whose last interval is reported as the steady state
# How much simulation the shrinking may spend, in process-cycles (cycles simulated x processes, about
# 10-30 s here): past it the depths stay valid but not all shown minimal. Counted, not timed, so the
# depths (and the folding that pays for them) do not depend on the machine's speed or load.
SIZING_BUDGET = 1_200_000_000
MINIMALITY_PASSES = 4  # rounds of "try depth - 1 everywhere" before giving up on a fixed point
PACER_OP = "Pacer"


@dataclass
class Sizing:
    depths: dict[int, int]  # every inner stream -> depth (the model's minimum)
    fixed: list[int]  # inner streams kept at FINN's depth 2 (into a width converter)
    free_interval: int  # last frame interval with every FIFO unbounded, the fixed ones too
    target: int  # last frame interval with every FIFO unbounded (SIZING_FRAMES frames)
    unbounded: SimResult
    result: SimResult  # the sized design over REPORT_FRAMES frames
    minimal: bool  # every sized FIFO was tried at depth - 1 against the final depths, and failed
    sims: int = 0
    seconds: float = 0.0
    work: int = 0  # process-cycles simulated while shrinking
    upper: dict[int, int] = field(default_factory=dict)  # the bounds the search started from

    @property
    def interval(self) -> int:
        return self.result.interval

    @property
    def latency(self) -> int:
        return self.result.latency


def inner_edges(g: StreamGraph) -> list[int]:
    """Streams between two nodes (the accelerator's input never runs dry, its output never blocks)."""
    return [e.index for e in g.edges if e.src is not None and e.dst is not None]


def fixed_edges(g: StreamGraph) -> list[int]:
    """Inner streams into a width converter: their depth is not the folding config's to set."""
    return [e for e in inner_edges(g) if g.proc(g.edges[e].dst).virtual]


def paced_graph(g: StreamGraph, period: int) -> StreamGraph:
    """The same graph with every accelerator input fed evenly over `period` cycles per frame."""
    edges = [copy.copy(e) for e in g.edges]
    procs = list(g.procs)
    for e in g.edges:
        if e.src is not None:
            continue
        name = f"{PACER_OP}({e.dst})"
        feed = Edge(len(edges), e.tensor + "_paced", None, 0, name, 0, e.tokens, e.width)
        edges.append(feed)
        edges[e.index].src, edges[e.index].src_port = name, 0
        steps, reads, writes = _generic([e.tokens], [e.tokens], period)
        procs.insert(0, Proc(name, PACER_OP, [feed.index], [e.index], steps, reads, writes, virtual=True))
    return StreamGraph(procs, edges, g.out_edge, dict(g.exp_cycles))


class _Search:
    """Tries depth vectors against the target; counts simulations and watches the budget."""

    def __init__(self, g: StreamGraph, target: int, fixed: list[int], budget: int):
        self.g, self.target, self.fixed = g, target, {e: DEFAULT_DEPTH for e in fixed}
        self.budget, self.work, self.sims = budget, 0, 0

    def ok(self, depths: dict[int, int]) -> bool:
        self.sims += 1
        r = simulate(self.g, {**depths, **self.fixed}, SIZING_FRAMES)
        self.work += r.cycles * len(self.g.procs)
        self.last = r
        return not r.deadlock and r.interval <= self.target

    def tighten(self, cur: dict[int, int]) -> None:
        """After a run that kept the target: no FIFO needs more than its peak there plus one (that
        reproduces the run exactly), so every FIFO drops to that at once, without another run."""
        for e in cur:
            cur[e] = min(cur[e], max(DEFAULT_DEPTH, int(self.last.max_occupancy[e]) + 1))

    def time_left(self) -> bool:
        return self.work < self.budget

    def shrink(self, cur: dict[int, int], e: int) -> bool:
        """Lower cur[e] to the least depth that still works, the others fixed: False when out of time.

        Most FIFOs end at or near their bound, so it first tries one less, then gallops down
        (2, 4, 8 ... less) and bisects the last step: one try for a FIFO already minimal."""
        lo, step = DEFAULT_DEPTH - 1, 1  # lo: the largest depth known to fail
        while cur[e] - lo > 1:
            if not self.time_left():
                return False
            trial = max(cur[e] - step, (lo + cur[e] + 1) // 2) if step else (lo + cur[e]) // 2
            if self.ok({**cur, e: trial}):
                cur[e], step = trial, step * 2 if step else 0
                self.tighten(cur)
            else:
                lo, step = trial, 0  # past the edge: bisect from here on
        return True


def _upper_bounds(g: StreamGraph, sized: list[int], target: int, unbounded: SimResult,
                  search: _Search) -> dict[int, int]:
    """Peak + 1 of a paced run (tight), else of the unbounded run (reproduces it exactly)."""
    paced = simulate(paced_graph(g, target), {**{e: None for e in sized}, **search.fixed}, SIZING_FRAMES)
    for run in (paced, unbounded):
        if run.deadlock:
            continue
        bounds = {e: max(DEFAULT_DEPTH, int(run.max_occupancy[e]) + 1) for e in sized}
        if search.ok(bounds):
            search.tighten(bounds)
            return bounds
    raise BnnflowError("The stream model does not reproduce its unbounded run with FIFOs one deeper than their "
                       "peak occupancy: this is a bug in bnnflow's FIFO sizing, please report it.")


def _shrink(search: _Search, cur: dict[int, int], widths: dict[int, int]) -> bool:
    """Shrink every FIFO above depth 2, the most memory first, then re-try depth - 1 on each until
    none shrinks: True when that fixed point was reached within the budget."""
    big = [e for e in cur if cur[e] > DEFAULT_DEPTH]
    if big and search.ok({**cur, **{e: DEFAULT_DEPTH for e in big}}):
        cur.update({e: DEFAULT_DEPTH for e in big})
        return True
    for e in sorted(big, key=lambda e: -cur[e] * widths[e]):
        if not search.shrink(cur, e):
            return False
    for _ in range(MINIMALITY_PASSES):
        before = dict(cur)
        for e in [e for e in cur if cur[e] > DEFAULT_DEPTH]:
            if not search.shrink(cur, e):
                return False
        if cur == before:
            return True
    return False


def size_all(g: StreamGraph, budget: int = SIZING_BUDGET) -> Sizing:
    """The smallest depth of every inner stream that keeps the unbounded run's frame interval."""
    t0 = time.monotonic()
    fixed = fixed_edges(g)
    sized = [e for e in inner_edges(g) if e not in set(fixed)]
    free = simulate(g, {e: None for e in inner_edges(g)}, SIZING_FRAMES)
    unbounded = simulate(g, {**{e: None for e in sized}, **{e: DEFAULT_DEPTH for e in fixed}}, SIZING_FRAMES)
    if unbounded.deadlock:
        raise BnnflowError("The stream model deadlocks even with unbounded FIFOs: the folding is inconsistent, "
                           "so rebuild it with 'bnnflow fold'.")
    search = _Search(g, unbounded.interval, fixed, budget)
    upper = _upper_bounds(g, sized, unbounded.interval, unbounded, search)
    cur = dict(upper)
    minimal = _shrink(search, cur, {e: g.edges[e].width for e in sized})
    depths = {**cur, **search.fixed}
    result = simulate(g, depths, REPORT_FRAMES)
    return Sizing(depths, fixed, free.interval, unbounded.interval, unbounded, result, minimal, sims=search.sims + 3,
                  seconds=time.monotonic() - t0, work=search.work, upper=upper)


def modelled_cycles(g: StreamGraph, node: str) -> int:
    """Cycles until one node, alone with an input that never runs dry and an output that never
    blocks, emits the last element of its first frame in the stream model. The hook for checking
    the model against cycle counts from RTL simulation of that layer alone (e.g. Verilator)."""
    return node_alone(g, node, 1).latency


def node_alone(g: StreamGraph, node: str, frames: int) -> SimResult:
    """The stream model's run of one node alone (inputs never dry, outputs never blocked), `frames` frames:
    what a Verilator bench of that node measures (fifo_crosscheck)."""
    p = g.proc(node)
    edges: list[Edge] = []
    for e in p.ins:
        edges.append(Edge(len(edges), g.edges[e].tensor, None, 0, p.name, g.edges[e].dst_port,
                          g.edges[e].tokens, g.edges[e].width))
    for port, e in enumerate(p.outs):
        edges.append(Edge(len(edges), g.edges[e].tensor, p.name, port, None, 0, g.edges[e].tokens, g.edges[e].width))
    alone = copy.copy(p)
    alone.ins, alone.outs = list(range(len(p.ins))), list(range(len(p.ins), len(edges)))
    sub = StreamGraph([alone], edges, alone.outs[0], {p.name: g.exp_cycles.get(p.name, 0)})
    return simulate(sub, {}, frames)
