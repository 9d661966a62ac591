"""Cycle-level token flow through a stream graph (the rules are in bnnflow.build_flows.fifos).

Every clock cycle, each process decides from the FIFO occupancies at the start of the cycle
whether it can move, and all moves take effect at its end. The processes of one kind are
stepped together, as numpy arrays over the processes, because a run takes up to millions of
cycles: SequentialProcs (every node with one control flow: MVAU, thresholding, forks, joins,
converters, ...) and WindowGenerators (sliding-window generators, which read and write in the
same cycle). The accelerator's input and output are streams that never run dry or block.
Stretches where every process that can move only has steps without I/O are skipped at once.
Every run goes through the same rules compiled to C (fifo_kernel) when a C compiler is there,
20-100x faster; the numpy loop stays as the fallback and the cross-check.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from bnnflow.errors import BnnflowError

from .fifo_graph import DEFAULT_DEPTH, Proc, StreamGraph
from .fifo_kernel import STATUS_DEADLOCK, STATUS_STOPPED, STATUS_TOO_LONG, kernel, run_kernel, supports

UNBOUNDED = 1 << 40  # depth of an unbounded FIFO, and the occupancy of the never-empty input
FRAMES = 2  # the first gives the latency, the last two the steady-state interval
PROCESS_CACHE = "_process_cache"  # attribute of a StreamGraph holding its prepared processes
SPARE_CYCLES = 10_000  # on top of every node's cycles plus every stream's tokens, before giving up


@dataclass
class SimResult:
    deadlock: bool
    cycles: int  # cycle at which the simulation ended
    frame_done: list[int]  # cycle at which each frame's last output left
    max_occupancy: np.ndarray  # per edge
    full_edges: list[int] = field(default_factory=list)  # at a deadlock: FIFOs that were full
    empty_waits: list[int] = field(default_factory=list)  # at a deadlock: empty inputs a node waits on
    waits: np.ndarray | None = None  # per edge: cycles its consumer waited on it while it was empty

    @property
    def latency(self) -> int:
        return self.frame_done[0] if self.frame_done else -1

    @property
    def interval(self) -> int:
        """Steady-state cycles per frame (between the last two frames)."""
        if len(self.frame_done) < 2:
            return -1
        return self.frame_done[-1] - self.frame_done[-2]


@dataclass
class Streams:
    """Per FIFO: occupancy, depth, peak occupancy, cycles waited on, reads. Two extra entries: a
    source that unused input ports read and a sink that unused output ports write."""

    occ: np.ndarray
    depth: np.ndarray
    peak: np.ndarray
    waits: np.ndarray
    reads: np.ndarray
    n_edges: int

    @classmethod
    def of(cls, g: StreamGraph, depths: dict[int, int | None]) -> Streams:
        n = len(g.edges)
        occ = np.zeros(n + 2, dtype=np.int64)
        depth = np.full(n + 2, DEFAULT_DEPTH, dtype=np.int64)
        for e, d in depths.items():
            depth[e] = UNBOUNDED if d is None else max(1, int(d))
        for e in g.edges:
            if e.src is None:
                occ[e.index] = UNBOUNDED  # the input never runs dry
            if e.dst is None:
                depth[e.index] = UNBOUNDED  # the output never blocks
        s = cls(occ, depth, np.zeros(n + 2, np.int64), np.zeros(n + 2, np.int64), np.zeros(n + 2, np.int64), n)
        occ[s.source], depth[s.sink] = UNBOUNDED, UNBOUNDED
        return s

    @property
    def source(self) -> int:
        return self.n_edges

    @property
    def sink(self) -> int:
        return self.n_edges + 1

    def full(self) -> list[int]:
        return [int(e) for e in range(self.n_edges) if self.depth[e] < UNBOUNDED and self.occ[e] >= self.depth[e]]


@dataclass(slots=True)
class SeqCycle:
    """What the sequential processes want and may do in one cycle (flags per port, per process)."""

    phase: np.ndarray  # index of the current step in the flattened programs
    live: np.ndarray  # not done with all frames
    reads: list[np.ndarray]
    writes: list[np.ndarray]
    has: list[np.ndarray]  # the input FIFO holds an element
    ok: np.ndarray  # the step executes
    rd: list[np.ndarray]  # reads that happen
    wr: list[np.ndarray]  # writes that happen

    def any_io(self) -> bool:
        return any(np.count_nonzero(x) for x in self.rd + self.wr)


class SequentialProcs:
    """Every sequential program, its steps flattened into one array; unused ports read the source
    and write the sink with all-false flags."""

    def __init__(self, procs: list[Proc], streams: Streams, frames: int):
        self.n_in = max([len(p.ins) for p in procs] + [1])
        self.n_out = max([len(p.outs) for p in procs] + [1])
        self.steps = np.array([max(p.steps, 1) for p in procs], dtype=np.int64)
        self.base = (np.cumsum(self.steps) - self.steps).astype(np.int64)
        self.total = self.steps * frames
        self.pc = np.zeros(len(procs), dtype=np.int64)
        none = [np.zeros(0, bool)]  # a graph of window generators only (a node modelled alone)
        self.rflags = [np.concatenate([_port_flags(p.reads, len(p.ins), k, p.steps) for p in procs] + none)
                       for k in range(self.n_in)]
        self.wflags = [np.concatenate([_port_flags(p.writes, len(p.outs), k, p.steps) for p in procs] + none)
                       for k in range(self.n_out)]
        self.ein = [_port_edges(procs, "ins", k, streams.source) for k in range(self.n_in)]
        self.eout = [_port_edges(procs, "outs", k, streams.sink) for k in range(self.n_out)]
        self.used = [np.array([k < len(p.ins) for p in procs], dtype=bool) for k in range(self.n_in)]
        self.dout = [streams.depth[e] for e in self.eout]  # depths never change during a run
        self.next_io = _steps_to_next_io(procs, self.rflags, self.wflags, self.base)
        self.static: dict = {}  # what fifo_kernel derives once from the arrays above

    def fresh(self, streams: Streams) -> SequentialProcs:
        """A copy at the start of a run with these depths: the program arrays are shared."""
        new = copy.copy(self)
        new.pc = np.zeros_like(self.pc)
        new.dout = [streams.depth[e] for e in self.eout]
        return new

    def moves(self, occ: np.ndarray) -> SeqCycle:
        phase = self.base + self.pc % self.steps
        live = self.pc < self.total
        reads = [f[phase] for f in self.rflags]
        writes = [f[phase] for f in self.wflags]
        has = [occ[e] > 0 for e in self.ein]
        ok = live.copy()
        for r, h in zip(reads, has):
            ok &= ~r | h
        for w, e, d in zip(writes, self.eout, self.dout):
            ok &= ~w | (occ[e] < d)
        return SeqCycle(phase, live, reads, writes, has, ok, [r & ok for r in reads], [w & ok for w in writes])

    def skip_idle(self, c: SeqCycle) -> int:
        """Run the processes that can move (all on steps without I/O) up to their next I/O: cycles."""
        jump = max(1, int(np.min(self.next_io[c.phase][c.ok])))
        self.pc[c.ok] += np.minimum(jump, self.total[c.ok] - self.pc[c.ok])
        return jump

    def apply(self, c: SeqCycle, occ: np.ndarray) -> None:
        self.pc += c.ok
        for e, rd in zip(self.ein, c.rd):
            occ[e[rd]] -= 1
        for e, wr in zip(self.eout, c.wr):
            occ[e[wr]] += 1

    def count_waits(self, c: SeqCycle, waits: np.ndarray) -> None:
        """Per input: +1 while its process waits on it empty and another input holds data."""
        full_in = [u & h for u, h in zip(self.used, c.has)]
        for k in range(self.n_in):
            others = np.zeros_like(c.live)
            for j in range(self.n_in):
                if j != k:
                    others |= full_in[j]
            waits[self.ein[k]] += c.live & c.reads[k] & ~c.has[k] & self.used[k] & others

    def starved(self, c: SeqCycle, n_edges: int) -> list[int]:
        out: list[int] = []
        for k in range(self.n_in):
            out += [int(e) for e in self.ein[k][c.reads[k] & ~c.has[k] & c.live] if e < n_edges]
        return out


def _port_flags(flags: list[np.ndarray], ports: int, k: int, steps: int) -> np.ndarray:
    return flags[k] if k < ports else np.zeros(steps, bool)


def _port_edges(procs: list[Proc], side: str, k: int, unused: int) -> np.ndarray:
    return np.array([getattr(p, side)[k] if k < len(getattr(p, side)) else unused for p in procs], dtype=np.int64)


def _steps_to_next_io(procs: list[Proc], rflags, wflags, base: np.ndarray) -> np.ndarray:
    """Per step: steps to the next step with I/O in its frame (to the frame's end if none)."""
    io = np.any(rflags, axis=0) | np.any(wflags, axis=0)
    next_io = np.empty(io.size, dtype=np.int64)
    for i, p in enumerate(procs):
        seg = io[base[i]: base[i] + p.steps]
        pos = np.where(seg, np.arange(p.steps), p.steps)
        nxt = np.minimum.accumulate(pos[::-1])[::-1]
        next_io[base[i]: base[i] + p.steps] = nxt - np.arange(p.steps)
    return next_io


class WindowGenerators:
    """Every sliding-window generator: read and write counters, and the need / oldest input of the
    next output (kept up to date as outputs leave), over the generators' concatenated tables."""

    def __init__(self, procs: list[Proc], streams: Streams, frames: int):
        self.count = len(procs)
        self.ins = np.array([p.ins[0] for p in procs], dtype=np.int64)
        self.outs = np.array([p.outs[0] for p in procs], dtype=np.int64)
        self.dout = streams.depth[self.outs]
        self.n_in = np.array([p.swg["in"] for p in procs], dtype=np.int64)
        self.n_out = np.array([p.swg["out"] for p in procs], dtype=np.int64)
        self.buffer = np.array([p.swg["buffer"] for p in procs], dtype=np.int64)
        self.need = _concat([p.swg["need"] for p in procs])
        self.oldest = _concat([p.swg["oldest"] for p in procs])
        self.need_base = _starts(self.n_out)
        self.oldest_base = _starts(self.n_out + 1)
        self.rc = np.zeros(self.count, dtype=np.int64)
        self.wc = np.zeros(self.count, dtype=np.int64)
        self.rtotal, self.wtotal = self.n_in * frames, self.n_out * frames
        self.need_now = self.need[self.need_base]
        self.oldest_now = self.oldest[self.oldest_base]

    def fresh(self, streams: Streams) -> WindowGenerators:
        """A copy at the start of a run with these depths: the window tables are shared."""
        new = copy.copy(self)
        new.dout = streams.depth[self.outs]
        new.rc, new.wc = np.zeros_like(self.rc), np.zeros_like(self.wc)
        new.need_now = self.need[self.need_base]
        new.oldest_now = self.oldest[self.oldest_base]
        return new

    def moves(self, occ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(can read, can write) per generator this cycle."""
        can_w = (self.wc < self.wtotal) & (self.rc > self.need_now) & (occ[self.outs] < self.dout)
        can_r = (self.rc < self.rtotal) & (occ[self.ins] > 0) & (self.rc - self.oldest_now < self.buffer)
        return can_r, can_w

    def apply(self, can_r: np.ndarray, can_w: np.ndarray, occ: np.ndarray) -> None:
        occ[self.ins[can_r]] -= 1
        self.rc += can_r
        if not np.count_nonzero(can_w):
            return
        occ[self.outs[can_w]] += 1
        self.wc += can_w
        idx = np.nonzero(can_w)[0]
        j = self.wc[idx] % self.n_out[idx]  # next output element within its frame
        frame_in = self.wc[idx] // self.n_out[idx] * self.n_in[idx]  # first input element of its frame
        self.need_now[idx] = self.need[self.need_base[idx] + j] + frame_in
        self.oldest_now[idx] = self.oldest[self.oldest_base[idx] + j] + frame_in

    def done(self) -> bool:
        return bool((self.wc >= self.wtotal).all())

    def starved(self, occ: np.ndarray) -> list[int]:
        if not self.count:
            return []
        return [int(e) for e in self.ins[(self.rc < self.rtotal) & (occ[self.ins] <= 0)]]


def _concat(tables: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(tables) if tables else np.zeros(0, np.int64)


def _starts(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes.size else sizes


class StreamSim:
    """One run of the stream model: `run()` steps it cycle by cycle to a SimResult."""

    def __init__(self, g: StreamGraph, depths: dict[int, int | None], frames: int, max_cycles: int | None,
                 track_waits: bool, stop_after_reads: dict[int, int] | None):
        self.g, self.frames, self.track_waits = g, frames, track_waits
        self.streams = Streams.of(g, depths)
        self.seq, self.swg = _processes(g, self.streams, frames)
        self.out_tokens = g.edges[g.out_edge].tokens
        self.max_cycles = max_cycles if max_cycles is not None else \
            frames * (sum(g.exp_cycles.values()) + sum(e.tokens for e in g.edges)) + SPARE_CYCLES
        self.stop_after_reads = stop_after_reads or None  # no edges: no early stop
        self.stop_edges = np.array(list((stop_after_reads or {}).keys()), dtype=np.int64)
        self.stop_counts = np.array(list((stop_after_reads or {}).values()), dtype=np.int64)
        self.cycle = 0
        self.frame_done: list[int] = []

    def run(self) -> SimResult:
        lib = kernel() if supports(self.seq) else None
        if lib is not None:
            return self._run_compiled(lib)
        occ = self.streams.occ
        while True:
            c = self.seq.moves(occ)
            can_r, can_w = self.swg.moves(occ) if self.swg.count else (None, None)
            swg_moves = can_r is not None and np.count_nonzero(can_w) + np.count_nonzero(can_r) > 0
            if not swg_moves and not c.any_io():
                if np.count_nonzero(c.ok):
                    self.cycle += self.seq.skip_idle(c)
                    continue
                if not np.count_nonzero(c.live) and self.swg.done():
                    return self._finished()
                return self._deadlock(c)
            if self.stop_after_reads is not None and self._reads_reached(c):
                return self._partial(False, waits=self.streams.waits[: self.streams.n_edges])
            if self.track_waits:
                self.seq.count_waits(c, self.streams.waits)
            self.seq.apply(c, occ)
            if swg_moves:
                self.swg.apply(can_r, can_w, occ)
            self._end_cycle()

    def _run_compiled(self, lib) -> SimResult:
        """The same cycle rules in C (fifo_kernel): identical frames, peaks and deadlock cycle."""
        status, self.cycle, self.frame_done = run_kernel(lib, self.seq, self.swg, self.streams, self.g.out_edge,
                                                         self.out_tokens, self.frames, self.max_cycles,
                                                         self.track_waits, self.stop_after_reads)
        if status == STATUS_TOO_LONG:
            self._too_long()
        if status == STATUS_STOPPED:
            return self._partial(False, waits=self.streams.waits[: self.streams.n_edges])
        if status == STATUS_DEADLOCK:
            return self._deadlock(self.seq.moves(self.streams.occ))
        return self._finished()

    def _too_long(self) -> None:
        raise BnnflowError(f"The stream model ran {self.cycle:,} cycles without finishing {self.frames} "
                           "frames: this is a bug in bnnflow's FIFO model, please report it.")

    def _reads_reached(self, c: SeqCycle) -> bool:
        for e, rd in zip(self.seq.ein, c.rd):
            self.streams.reads[e[rd]] += 1
        return bool(np.all(self.streams.reads[self.stop_edges] >= self.stop_counts))

    def _end_cycle(self) -> None:
        s = self.streams
        s.occ[s.source] = UNBOUNDED
        np.maximum(s.peak, s.occ, out=s.peak)
        self.cycle += 1
        while len(self.frame_done) < self.frames and \
                s.occ[self.g.out_edge] >= (len(self.frame_done) + 1) * self.out_tokens:
            self.frame_done.append(self.cycle)
        if self.cycle > self.max_cycles:
            self._too_long()

    def _partial(self, deadlock: bool, **kw) -> SimResult:
        for e in self.g.edges:
            if e.src is None:
                self.streams.peak[e.index] = 0  # the input's "occupancy" is the endless supply
        return SimResult(deadlock, self.cycle, self.frame_done, self.streams.peak[: self.streams.n_edges], **kw)

    def _deadlock(self, c: SeqCycle) -> SimResult:
        s = self.streams
        starved = self.seq.starved(c, s.n_edges) + self.swg.starved(s.occ)
        return self._partial(True, full_edges=s.full(), empty_waits=starved)

    def _finished(self) -> SimResult:
        return self._partial(False, waits=self.streams.waits[: self.streams.n_edges])


def _processes(g: StreamGraph, streams: Streams, frames: int) -> tuple[SequentialProcs, WindowGenerators]:
    """The graph's processes for a run: built once per graph and frame count (the sizing runs the
    same graph hundreds of times with other depths), then copied fresh."""
    cache = g.__dict__.setdefault(PROCESS_CACHE, {})
    if frames not in cache:
        cache[frames] = (SequentialProcs([p for p in g.procs if p.swg is None], streams, frames),
                         WindowGenerators([p for p in g.procs if p.swg is not None], streams, frames))
    seq, swg = cache[frames]
    return seq.fresh(streams), swg.fresh(streams)


def simulate(g: StreamGraph, depths: dict[int, int | None] | None = None, frames: int = FRAMES,
             max_cycles: int | None = None, track_waits: bool = False,
             stop_after_reads: dict[int, int] | None = None) -> SimResult:
    """Cycle-level token flow of `frames` frames; depths: edge -> FIFO depth (None: unbounded).

    track_waits counts, per edge, the cycles its consumer waited on it while another of its inputs
    had data; stop_after_reads ends the run early once each listed edge had that many reads.
    """
    return StreamSim(g, depths or {}, frames, max_cycles, track_waits, stop_after_reads).run()
