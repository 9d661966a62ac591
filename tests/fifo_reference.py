"""A second, deliberately plain simulator of bnnflow's stream model, to check build_flows/fifos.py.

It takes the same stream graph (fifos.stream_graph: one process per FINN node, each with its
per-frame program of reads and writes derived from FINN's cycle counts and loop structure, or
a sliding-window generator's need / oldest / line-buffer facts) and runs it one clock cycle at
a time, one process at a time, in plain Python, from the rules stated in fifos.py's docstring:

* a sequential process executes the step its program counter points at when every input it
  reads that step holds an element and every output it writes has room; otherwise it stalls;
  steps without reads or writes always execute (one cycle each);
* a window generator may, in the same cycle, write output j once it has read input element
  need[j] (i.e. more than need[j] inputs), and read its next input q while q - oldest < buffer,
  oldest being the first input element the next output still needs;
* every test is made on the occupancies at the start of the cycle, every move takes effect at
  its end (an element written in cycle t can be read from t+1 on, a slot freed in cycle t can
  be written from t+1 on); the accelerator's input never runs dry, its output never blocks;
* frame f is done in the cycle its last output element leaves (the output stream has received
  (f + 1) * tokens elements); a cycle in which nothing can move, before the end, is a deadlock.

None of fifos.simulate's vectorisation, idle-step skipping or bookkeeping is reused, so a
mistake there (or in this file) shows up as a difference between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

UNBOUNDED = float("inf")


@dataclass
class RefResult:
    deadlock: bool
    cycles: int
    frame_done: list[int]
    max_occupancy: list[int]

    @property
    def interval(self) -> int:
        return self.frame_done[-1] - self.frame_done[-2] if len(self.frame_done) >= 2 else -1


def reference_simulate(g, depths: dict[int, int | None] | None = None, frames: int = 2,
                       default_depth: int = 2, limit: int = 10_000_000) -> RefResult:
    depths = depths or {}
    n = len(g.edges)
    cap = [float(default_depth)] * n
    occ = [0] * n
    source = set()
    for e in g.edges:
        if e.index in depths:
            cap[e.index] = UNBOUNDED if depths[e.index] is None else max(1, int(depths[e.index]))
        if e.dst is None:
            cap[e.index] = UNBOUNDED
        if e.src is None:
            source.add(e.index)
    peak = [0] * n
    out_edge, out_tokens = g.out_edge, g.edges[g.out_edge].tokens
    received = 0

    seq = [p for p in g.procs if p.swg is None]
    swg = [p for p in g.procs if p.swg is not None]
    # per sequential process: (step count, reads per step as edge lists, writes per step as edge lists)
    programs = []
    for p in seq:
        steps = max(p.steps, 1)
        reads = [[p.ins[k] for k in range(len(p.ins)) if p.reads[k][s]] for s in range(p.steps)] or [[]]
        writes = [[p.outs[k] for k in range(len(p.outs)) if p.writes[k][s]] for s in range(p.steps)] or [[]]
        programs.append((steps, reads, writes))
    pc = [0] * len(seq)
    rc = [0] * len(swg)  # inputs read so far
    wc = [0] * len(swg)  # outputs written so far
    unfinished = len(seq) + len(swg)
    is_source = [e in source for e in range(n)]

    # occ changes only at the end of a cycle (through `delta`), so during a cycle it holds the start-of-cycle
    # occupancies every test is made on
    def has(e: int) -> bool:
        return occ[e] > 0 or is_source[e]

    def room(e: int) -> bool:
        return occ[e] < cap[e]

    frame_done: list[int] = []
    cycle = 0
    while True:
        if unfinished == 0:
            return RefResult(False, cycle, frame_done, peak)
        delta: dict[int, int] = {}
        moved = False
        for i, (steps, reads, writes) in enumerate(programs):
            if pc[i] >= steps * frames:
                continue
            s = pc[i] % steps
            if all(has(e) for e in reads[s]) and all(room(e) for e in writes[s]):
                for e in reads[s]:
                    delta[e] = delta.get(e, 0) - 1
                for e in writes[s]:
                    delta[e] = delta.get(e, 0) + 1
                pc[i] += 1
                unfinished -= pc[i] == steps * frames
                moved = True
        for i, p in enumerate(swg):
            m = p.swg
            e_in, e_out = p.ins[0], p.outs[0]
            if wc[i] < m["out"] * frames:
                frame, j = divmod(wc[i], m["out"])
                if rc[i] > m["need"][j] + frame * m["in"] and room(e_out):
                    delta[e_out] = delta.get(e_out, 0) + 1
                    wc[i] += 1
                    unfinished -= wc[i] == m["out"] * frames
                    moved = True
                    oldest_changed = True
                else:
                    oldest_changed = False
            else:
                oldest_changed = False
            # `oldest` as at the start of this cycle: the output about to be written (before this cycle's write)
            w_now = wc[i] - (1 if oldest_changed else 0)
            if w_now < m["out"] * frames:
                frame, j = divmod(w_now, m["out"])
                oldest = m["oldest"][j] + frame * m["in"]
            else:
                oldest = m["in"] * frames
            if rc[i] < m["in"] * frames and has(e_in) and rc[i] - oldest < m["buffer"]:
                delta[e_in] = delta.get(e_in, 0) - 1
                rc[i] += 1
                moved = True
        if not moved:
            return RefResult(True, cycle, frame_done, peak)
        for e, d in delta.items():
            if not is_source[e]:
                occ[e] += d
                if occ[e] > peak[e]:
                    peak[e] = occ[e]
        received += delta.get(out_edge, 0)
        cycle += 1
        while len(frame_done) < frames and received >= (len(frame_done) + 1) * out_tokens:
            frame_done.append(cycle)
        if cycle > limit:
            raise RuntimeError(f"reference simulation ran past {limit} cycles")
