"""The join check: simulate a folded graph with the FIFO depths on it and name any join FIFO that
deadlocks or stalls it (bnnflow.build_flows.fifos explains the model and the sizing)."""

from __future__ import annotations

from dataclasses import dataclass

from bnnflow.errors import BnnflowError

from .fifo_graph import DEFAULT_DEPTH, StreamGraph, branch_of, stream_graph
from .fifo_sim import SimResult, simulate
from .fifo_sizing import SIZING_FRAMES, inner_edges

@dataclass
class JoinCheck:
    ok: bool
    message: str
    latency: int
    interval: int
    reference_interval: int
    deadlock: bool


def check_join_fifos(model, depths: dict[str, list[int]] | None = None, frames: int = SIZING_FRAMES,
                     raise_error: bool = True, reference=None) -> JoinCheck:
    """Simulate the graph with the FIFO depths on it (every stream: the nodes' in/outFIFODepths as
    FINN's InsertFIFO reads them), the join inputs overridden by `depths` (join -> list).

    Fails (BnnflowError) when the graph deadlocks or runs slower than the reference: the sizing of
    every FIFO (`reference`, a FifoPlan from size_join_fifos: the unbounded run's interval), or,
    without one, the join sizing afresh (unbounded short branches); the message names the join,
    its depth and the depth it needs.
    """
    from .fifos import _stall_free_depths, depths_on_graph

    g = stream_graph(model)
    on_graph = _join_depths(depths_on_graph(model, g), g, depths)
    joins = g.join_edges()
    sim = simulate(g, {e: on_graph[e] for e in inner_edges(g)}, frames)
    need, ref_interval = _needed_depths(g, joins, frames, reference, _stall_free_depths)
    result = _verdict(g, sim, on_graph, need, ref_interval)
    if raise_error and not result.ok:
        raise BnnflowError(result.message)
    return result


def _join_depths(on_graph: dict[int, int], g: StreamGraph, depths: dict[str, list[int]] | None) -> dict[int, int]:
    """Every stream's depth on the graph, the join inputs overridden by `depths` (join -> list)."""
    if depths is not None:
        for e in g.join_edges():
            edge = g.edges[e]
            if edge.dst in depths:
                d = depths[edge.dst]
                on_graph[e] = max(DEFAULT_DEPTH, d[min(edge.dst_port, len(d) - 1)])
    return on_graph


def _needed_depths(g: StreamGraph, joins: list[int], frames: int, reference,
                   stall_free) -> tuple[dict[int, int], int]:
    """(join edge -> depth it needs, stall-free interval): from the plan, or sized afresh."""
    if reference is not None and reference.interval > 0:
        planned = {(f.join, f.port): f.depth for f in reference.fifos}
        need = {e: planned.get((g.edges[e].dst, g.edges[e].dst_port), DEFAULT_DEPTH) for e in joins}
        target = reference.target_interval if reference.target_interval > 0 else reference.interval
        return need, target
    ref, need = stall_free(g, frames)
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


