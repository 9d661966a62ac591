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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bnnflow import compat
from bnnflow.errors import BnnflowError

compat.finn_ready()

from onnx import helper  # noqa: E402
from qonnx.custom_op.registry import getCustomOp  # noqa: E402

from finn.util.fpgadataflow import is_hls_node, is_rtl_node  # noqa: E402

DEFAULT_DEPTH = 2  # FINN's InsertFIFO(create_shallow_fifos=True) puts this on every other stream
PIPELINE_SLACK = 8  # elements per node of the other branch, for the pipeline latency the model omits
JOIN_OPS = ("ElementwiseAdd", "StreamingConcat")
FORK_OPS = ("DuplicateStreams",)
UNBOUNDED = 1 << 40
FRAMES = 2


def base_op(op_type: str) -> str:
    for suffix in ("_hls", "_rtl"):
        if op_type.endswith(suffix):
            return op_type[: -len(suffix)]
    return op_type


def is_hw(node) -> bool:
    return is_hls_node(node) or is_rtl_node(node)


def _tokens(shape) -> int:
    return int(np.prod(shape[:-1]))


# --------------------------------------------------------------------------- stream graph

@dataclass
class Edge:
    index: int
    tensor: str
    src: str | None  # producing node (None: the accelerator's input)
    src_port: int
    dst: str | None  # consuming node (None: the accelerator's output)
    dst_port: int
    tokens: int  # elements per frame
    width: int  # bits per element


@dataclass
class Proc:
    """One process of the model: a sequential program or a sliding-window generator."""

    name: str
    op_type: str
    ins: list[int]  # edge index per input port
    outs: list[int]  # edge index per output port
    steps: int = 0  # per frame (sequential programs)
    reads: list[np.ndarray] = field(default_factory=list)  # bool per step, per input port
    writes: list[np.ndarray] = field(default_factory=list)  # bool per step, per output port
    swg: dict | None = None  # need / oldest / buffer / in / out for a window generator
    virtual: bool = False  # a data-width converter FINN will insert


@dataclass
class StreamGraph:
    procs: list[Proc]
    edges: list[Edge]
    out_edge: int  # the accelerator's output stream
    exp_cycles: dict[str, int]  # FINN's estimate per node

    def proc(self, name: str) -> Proc:
        return next(p for p in self.procs if p.name == name)

    def consumer(self, edge: int) -> Proc | None:
        e = self.edges[edge]
        return None if e.dst is None else self.proc(e.dst)

    def producer(self, edge: int) -> Proc | None:
        e = self.edges[edge]
        return None if e.src is None else self.proc(e.src)

    def join_edges(self) -> list[int]:
        return [i for p in self.procs if base_op(p.op_type) in JOIN_OPS and len(p.ins) > 1 for i in p.ins]


def _sequential(steps: int, reads: list[np.ndarray], writes: list[np.ndarray]):
    return steps, [np.asarray(r, dtype=bool) for r in reads], [np.asarray(w, dtype=bool) for w in writes]


def _spread_reads(n: int, steps: int) -> np.ndarray:
    flags = np.zeros(steps, dtype=bool)
    flags[(np.arange(n) * steps) // n] = True
    return flags


def _spread_writes(n: int, steps: int) -> np.ndarray:
    flags = np.zeros(steps, dtype=bool)
    flags[-(-(np.arange(1, n + 1) * steps) // n) - 1] = True
    return flags


def _generic(in_tokens: list[int], out_tokens: list[int], cycles: int):
    """Evenly spread reads and writes over max(cycles, tokens) steps (unknown ops, width converters)."""
    steps = max([int(cycles), 1, *in_tokens, *out_tokens])
    return _sequential(steps, [_spread_reads(n, steps) for n in in_tokens],
                       [_spread_writes(n, steps) for n in out_tokens])


def _program(inst, op: str, in_tokens: list[int], out_tokens: list[int]):
    """(steps, reads, writes) of one frame of a sequential FINN node."""
    if op == "MVAU":
        pixels = int(np.prod(inst.get_nodeattr("numInputVectors")))
        sf = inst.get_nodeattr("MW") // inst.get_nodeattr("SIMD")
        nf = inst.get_nodeattr("MH") // inst.get_nodeattr("PE")
        idx = np.arange(pixels * nf * sf)
        return _sequential(idx.size, [(idx // sf) % nf == 0], [idx % sf == sf - 1])
    if op in ("Thresholding", "DuplicateStreams", "ElementwiseAdd", "ElementwiseMul", "ElementwiseSub",
              "ElementwiseMax", "ElementwiseMin") and all(n == out_tokens[0] for n in in_tokens + out_tokens):
        n = out_tokens[0]
        return _sequential(n, [np.ones(n, bool)] * len(in_tokens), [np.ones(n, bool)] * len(out_tokens))
    if op == "StreamingConcat":
        simd = inst.get_nodeattr("SIMD")
        folds = [c // simd for c in inst.get_nodeattr("ChannelsPerStream")]
        per_pixel = sum(folds)
        pixels = out_tokens[0] // per_pixel
        port = np.repeat(np.arange(len(folds)), folds)
        port = np.tile(port, pixels)
        return _sequential(port.size, [port == i for i in range(len(folds))], [np.ones(port.size, bool)])
    if op == "FMPadding":
        h, w = inst.get_nodeattr("ImgDim")
        top, left, bottom, right = inst.get_nodeattr("Padding")
        cf = inst.get_nodeattr("NumChannels") // inst.get_nodeattr("SIMD")
        oh, ow = h + top + bottom, w + left + right
        y = np.arange(oh)[:, None, None]
        x = np.arange(ow)[None, :, None]
        inside = (y >= top) & (y < top + h) & (x >= left) & (x < left + w) & np.ones((1, 1, cf), bool)
        inside = inside.reshape(-1)
        return _sequential(inside.size, [inside], [np.ones(inside.size, bool)])
    if op == "Pool":
        k = int(np.prod(inst.get_nodeattr("KernelSize")))
        n = in_tokens[0]
        return _sequential(n, [np.ones(n, bool)], [np.arange(n) % k == k - 1])
    if op == "LabelSelect":
        n = in_tokens[0]
        return _sequential(n, [np.ones(n, bool)], [np.arange(n) >= n - out_tokens[0]])
    if op == "GlobalAccPool":
        n, m = in_tokens[0], out_tokens[0]
        return _sequential(n + m, [np.arange(n + m) < n], [np.arange(n + m) >= n])
    return None


def _swg_model(inst, in_tokens: int, out_tokens: int) -> dict | None:
    """Input element needed by each output element, oldest element still needed, line buffer depth."""
    c = inst.get_nodeattr("IFMChannels")
    h, w = inst.get_nodeattr("IFMDim")
    oh, ow = inst.get_nodeattr("OFMDim")
    kh, kw = inst.get_nodeattr("ConvKernelDim")
    sh, sw = inst.get_nodeattr("Stride")
    dh, dw = inst.get_nodeattr("Dilation")
    simd = inst.get_nodeattr("SIMD")
    cf = c // simd
    impl = inst.select_impl_style()
    oy = np.arange(oh).reshape(-1, 1, 1, 1, 1)
    ox = np.arange(ow).reshape(1, -1, 1, 1, 1)
    if impl == "parallel" or (kh == 1 and kw == 1):
        # one element = a whole window of SIMD channels: order (oy, ox, cf)
        f = np.arange(cf).reshape(1, 1, -1)
        oy, ox = oy[:, :, 0, 0, 0][:, :, None], ox[:, :, 0, 0, 0][:, :, None]
        last = ((oy * sh + (kh - 1) * dh) * w + ox * sw + (kw - 1) * dw) * cf + f
        first = ((oy * sh) * w + ox * sw) * cf + f
        last, first = last.reshape(-1), first.reshape(-1)
    else:
        ky = np.arange(kh)
        kx = np.arange(kw)
        f = np.arange(cf)
        if inst.get_nodeattr("depthwise"):  # (oy, ox, cf, ky, kx)
            ky, kx, f = ky.reshape(1, 1, 1, -1, 1), kx.reshape(1, 1, 1, 1, -1), f.reshape(1, 1, -1, 1, 1)
        else:  # (oy, ox, ky, kx, cf)
            ky, kx, f = ky.reshape(1, 1, -1, 1, 1), kx.reshape(1, 1, 1, -1, 1), f.reshape(1, 1, 1, 1, -1)
        idx = ((oy * sh + ky * dh) * w + ox * sw + kx * dw) * cf + f
        last = first = idx.reshape(-1)
    if last.size != out_tokens or in_tokens != h * w * cf:
        return None
    need = np.maximum.accumulate(last)
    oldest = np.append(np.minimum.accumulate(first[::-1])[::-1], in_tokens)
    span = int(np.max(need - oldest[:-1])) + 1
    buffer = max(int(inst.get_buffer_depth()), span)
    return {"need": need.astype(np.int64), "oldest": oldest.astype(np.int64), "buffer": buffer,
            "in": in_tokens, "out": out_tokens}


def stream_graph(model, programs: bool = True) -> StreamGraph:
    """The stream model of a folded FINN dataflow graph (all nodes specialised to _hls/_rtl).

    programs=False gives the streams and width converters only (enough for costs, not to simulate).
    """
    nodes = [n for n in model.graph.node if is_hw(n)]
    if len(nodes) != len(model.graph.node):
        other = sorted({n.op_type for n in model.graph.node if not is_hw(n)})
        raise BnnflowError(f"The FIFO model needs a graph of FINN HW layers only, but it has {', '.join(other)}: "
                           "use the model saved after the specialize_layers step.")
    edges: list[Edge] = []
    procs: list[Proc] = []
    exp_cycles: dict[str, int] = {}
    insts = {n.name: getCustomOp(n) for n in nodes}
    dyn_inputs = {n.name: [i for i, t in enumerate(n.input) if t and model.get_initializer(t) is None]
                  for n in nodes}
    producers = {t: (n.name, q) for n in nodes for q, t in enumerate(n.output)}
    in_ports: dict[str, list[int]] = {n.name: [] for n in nodes}
    out_ports: dict[str, list[int | None]] = {n.name: [None] * len(n.output) for n in nodes}
    graph_outputs = {o.name for o in model.graph.output}
    out_edge = -1

    def add_edge(**kw) -> int:
        edges.append(Edge(index=len(edges), **kw))
        return edges[-1].index

    for n in nodes:
        inst = insts[n.name]
        for i in dyn_inputs[n.name]:
            t = n.input[i]
            tok = _tokens(inst.get_folded_input_shape(i))
            width = int(inst.get_instream_width(i))
            if t not in producers:  # the accelerator's input
                in_ports[n.name].append(add_edge(tensor=t, src=None, src_port=0, dst=n.name, dst_port=i,
                                                 tokens=tok, width=width))
                continue
            src, q = producers[t]
            sinst = insts[src]
            stok = _tokens(sinst.get_folded_output_shape(q))
            swidth = int(sinst.get_outstream_width(q))
            if stok * swidth != tok * width:
                raise BnnflowError(f"Stream {t} from {src} to {n.name} carries {stok * swidth} bits per frame "
                                   f"on one side and {tok * width} on the other: the folding is inconsistent.")
            if (stok, swidth) == (tok, width):
                e = add_edge(tensor=t, src=src, src_port=q, dst=n.name, dst_port=i, tokens=tok, width=width)
                out_ports[src][q] = e
                in_ports[n.name].append(e)
                continue
            # FINN's InsertDWC will put a data-width converter here
            dwc = f"DWC({src}->{n.name})"
            e1 = add_edge(tensor=t, src=src, src_port=q, dst=dwc, dst_port=0, tokens=stok, width=swidth)
            e2 = add_edge(tensor=t + "_dwc", src=dwc, src_port=0, dst=n.name, dst_port=i, tokens=tok, width=width)
            out_ports[src][q] = e1
            in_ports[n.name].append(e2)
            steps, reads, writes = _generic([stok], [tok], 0) if programs else (0, [], [])
            procs.append(Proc(dwc, "StreamingDataWidthConverter", [e1], [e2], steps, reads, writes, virtual=True))
            exp_cycles[dwc] = steps
    for n in nodes:
        inst = insts[n.name]
        for q, t in enumerate(n.output):
            if out_ports[n.name][q] is None:
                e = add_edge(tensor=t, src=n.name, src_port=q, dst=None, dst_port=0,
                             tokens=_tokens(inst.get_folded_output_shape(q)),
                             width=int(inst.get_outstream_width(q)))
                out_ports[n.name][q] = e
                if t in graph_outputs:
                    out_edge = e
        op = base_op(n.op_type)
        ins = in_ports[n.name]
        outs = [e for e in out_ports[n.name]]
        in_tok = [edges[e].tokens for e in ins]
        out_tok = [edges[e].tokens for e in outs]
        cycles = int(inst.get_exp_cycles())
        exp_cycles[n.name] = cycles
        proc = Proc(n.name, n.op_type, ins, outs)
        if not programs:
            procs.append(proc)
            continue
        if op == "ConvolutionInputGenerator" and len(ins) == 1 and len(outs) == 1:
            proc.swg = _swg_model(inst, in_tok[0], out_tok[0])
        if proc.swg is None:
            prog = _program(inst, op, in_tok, out_tok)
            if prog is None:
                prog = _generic(in_tok, out_tok, cycles)
            proc.steps, proc.reads, proc.writes = prog
            if [int(r.sum()) for r in proc.reads] != in_tok or [int(w.sum()) for w in proc.writes] != out_tok:
                proc.steps, proc.reads, proc.writes = _generic(in_tok, out_tok, cycles)
        procs.append(proc)
    # keep FINN's (topological) order, with each converter just before its consumer
    order = {n.name: i for i, n in enumerate(nodes)}
    procs.sort(key=lambda p: order[p.name] if not p.virtual else order[edges[p.outs[0]].dst] - 0.5)
    if out_edge < 0:
        out_edge = procs[-1].outs[0]
    return StreamGraph(procs, edges, out_edge, exp_cycles)


# --------------------------------------------------------------------------- simulation

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


def simulate(g: StreamGraph, depths: dict[int, int | None] | None = None, frames: int = FRAMES,
             max_cycles: int | None = None, track_waits: bool = False,
             stop_after_reads: dict[int, int] | None = None) -> SimResult:
    """Cycle-level token flow of `frames` frames; depths: edge -> FIFO depth (None: unbounded).

    track_waits counts, per edge, the cycles its consumer waited on it while another of its inputs
    had data; stop_after_reads ends the run early once each listed edge had that many reads.
    """
    depths = depths or {}
    n_edges = len(g.edges)
    src, snk = n_edges, n_edges + 1
    occ = np.zeros(n_edges + 2, dtype=np.int64)
    depth = np.full(n_edges + 2, DEFAULT_DEPTH, dtype=np.int64)
    for e, d in depths.items():
        depth[e] = UNBOUNDED if d is None else max(1, int(d))
    for e in g.edges:
        if e.src is None:
            occ[e.index] = UNBOUNDED  # the input never runs dry
        if e.dst is None:
            depth[e.index] = UNBOUNDED  # the output never blocks
    occ[src], depth[snk] = UNBOUNDED, UNBOUNDED
    out_tokens = g.edges[g.out_edge].tokens

    seq = [p for p in g.procs if p.swg is None]
    swg = [p for p in g.procs if p.swg is not None]
    n_in = max([len(p.ins) for p in seq] + [1])
    n_out = max([len(p.outs) for p in seq] + [1])
    steps = np.array([max(p.steps, 1) for p in seq], dtype=np.int64)
    base = np.concatenate([[0], np.cumsum(steps)[:-1]]).astype(np.int64)
    total = steps * frames
    # 2-D (port x step) flags and (port x process) streams; unused ports read the source / write the sink
    rflags = np.stack([np.concatenate([p.reads[k] if k < len(p.ins) else np.zeros(p.steps, bool) for p in seq])
                       for k in range(n_in)])
    wflags = np.stack([np.concatenate([p.writes[k] if k < len(p.outs) else np.zeros(p.steps, bool) for p in seq])
                       for k in range(n_out)])
    ein = np.array([[p.ins[k] if k < len(p.ins) else src for p in seq] for k in range(n_in)], dtype=np.int64)
    eout = np.array([[p.outs[k] if k < len(p.outs) else snk for p in seq] for k in range(n_out)], dtype=np.int64)
    used = np.array([[k < len(p.ins) for p in seq] for k in range(n_in)], dtype=bool)
    dout = depth[eout]  # depths never change during a run
    io = rflags.any(0) | wflags.any(0)
    # steps to the next step with I/O (within the frame; to the frame's end if none), for skipping idle runs
    next_io = np.empty(io.size, dtype=np.int64)
    for p_i, p in enumerate(seq):
        seg = io[base[p_i]: base[p_i] + p.steps]
        pos = np.where(seg, np.arange(p.steps), p.steps)
        nxt = np.minimum.accumulate(pos[::-1])[::-1]
        next_io[base[p_i]: base[p_i] + p.steps] = nxt - np.arange(p.steps)
    pc = np.zeros(len(seq), dtype=np.int64)

    has_swg = bool(swg)
    s_in = np.array([p.ins[0] for p in swg], dtype=np.int64)
    s_out = np.array([p.outs[0] for p in swg], dtype=np.int64)
    s_dout = depth[s_out]
    s_nin = np.array([p.swg["in"] for p in swg], dtype=np.int64)
    s_nout = np.array([p.swg["out"] for p in swg], dtype=np.int64)
    s_buf = np.array([p.swg["buffer"] for p in swg], dtype=np.int64)
    s_need = np.concatenate([p.swg["need"] for p in swg]) if swg else np.zeros(0, np.int64)
    s_nbase = np.concatenate([[0], np.cumsum(s_nout)[:-1]]).astype(np.int64) if swg else s_nout
    s_old = np.concatenate([p.swg["oldest"] for p in swg]) if swg else np.zeros(0, np.int64)
    s_obase = np.concatenate([[0], np.cumsum(s_nout + 1)[:-1]]).astype(np.int64) if swg else s_nout
    rc = np.zeros(len(swg), dtype=np.int64)
    wc = np.zeros(len(swg), dtype=np.int64)
    s_rtotal, s_wtotal = s_nin * frames, s_nout * frames
    # need / oldest of the next output, kept up to date as outputs leave
    s_need_now = s_need[s_nbase] if swg else s_nout
    s_old_now = s_old[s_obase] if swg else s_nout

    max_occ = np.zeros(n_edges + 2, dtype=np.int64)
    waits = np.zeros(n_edges + 2, dtype=np.int64)
    frame_done: list[int] = []
    if max_cycles is None:
        max_cycles = frames * (sum(g.exp_cycles.values()) + sum(e.tokens for e in g.edges)) + 10_000
    cycle = 0
    out_e = g.out_edge
    reads_done = np.zeros(n_edges + 2, dtype=np.int64)
    stop_edges = np.array(list((stop_after_reads or {}).keys()), dtype=np.int64)
    stop_counts = np.array(list((stop_after_reads or {}).values()), dtype=np.int64)
    rf = list(rflags)
    wf = list(wflags)
    ei = list(ein)
    eo = list(eout)
    do = list(dout)
    nz = np.count_nonzero
    while True:
        ph = base + pc % steps
        live = pc < total
        reads = [f[ph] for f in rf]
        writes = [f[ph] for f in wf]
        has = [occ[e] > 0 for e in ei]
        ok = live.copy()
        for r, h in zip(reads, has):
            ok &= ~r | h
        for w, e, d in zip(writes, eo, do):
            ok &= ~w | (occ[e] < d)
        if has_swg:
            can_w = (wc < s_wtotal) & (rc > s_need_now) & (occ[s_out] < s_dout)
            can_r = (rc < s_rtotal) & (occ[s_in] > 0) & (rc - s_old_now < s_buf)
            swg_moves = nz(can_w) + nz(can_r) > 0
        else:
            swg_moves = False
        rd = [r & ok for r in reads]
        wr = [w & ok for w in writes]
        io_any = rd[0].copy()
        for x in rd[1:] + wr:
            io_any |= x
        if not swg_moves and not nz(io_any):
            if not nz(ok):
                if not nz(live) and (wc >= s_wtotal).all():
                    break
                full = [int(e) for e in range(n_edges) if depth[e] < UNBOUNDED and occ[e] >= depth[e]]
                waits_now = []
                for k in range(n_in):
                    waits_now += [int(e) for e in ei[k][reads[k] & ~has[k] & live] if e < n_edges]
                if has_swg:
                    blocked = (rc < s_rtotal) & (occ[s_in] <= 0)
                    waits_now += [int(e) for e in s_in[blocked]]
                return SimResult(True, cycle, frame_done, max_occ[:n_edges], full, waits_now)
            # only idle steps can run: skip ahead to the next step with I/O
            jump = max(1, int(np.min(next_io[ph][ok])))
            pc[ok] += np.minimum(jump, total[ok] - pc[ok])
            cycle += jump
            continue
        if stop_after_reads is not None:
            for k in range(n_in):
                reads_done[ei[k][rd[k]]] += 1
            if np.all(reads_done[stop_edges] >= stop_counts):
                return SimResult(False, cycle, frame_done, max_occ[:n_edges], waits=waits[:n_edges])
        if track_waits:
            # waiting on an empty input while another input has data: that input is the late one
            full_in = [used[k] & has[k] for k in range(n_in)]
            for k in range(n_in):
                others = np.zeros_like(live)
                for j in range(n_in):
                    if j != k:
                        others |= full_in[j]
                waits[ei[k]] += live & reads[k] & ~has[k] & used[k] & others
        pc += ok
        for k in range(n_in):
            occ[ei[k][rd[k]]] -= 1
        for k in range(n_out):
            occ[eo[k][wr[k]]] += 1
        if has_swg:
            occ[s_in[can_r]] -= 1
            rc += can_r
            if nz(can_w):
                occ[s_out[can_w]] += 1
                wc += can_w
                idx = np.nonzero(can_w)[0]
                wj = wc[idx] % s_nout[idx]
                wf_ = wc[idx] // s_nout[idx]
                s_need_now[idx] = s_need[s_nbase[idx] + wj] + wf_ * s_nin[idx]
                s_old_now[idx] = s_old[s_obase[idx] + wj] + wf_ * s_nin[idx]
        occ[src] = UNBOUNDED
        np.maximum(max_occ, occ, out=max_occ)
        cycle += 1
        while len(frame_done) < frames and occ[out_e] >= (len(frame_done) + 1) * out_tokens:
            frame_done.append(cycle)
        if cycle > max_cycles:
            raise BnnflowError(f"The stream model ran {cycle:,} cycles without finishing {frames} frames: "
                               "this is a bug in bnnflow's FIFO model, please report it.")
    for e in g.edges:
        if e.src is None:
            max_occ[e.index] = 0
    return SimResult(False, cycle, frame_done, max_occ[:n_edges], waits=waits[:n_edges])


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


def _branch(g: StreamGraph, edge: int) -> tuple[str | None, int]:
    """Walk up from a join input to the fork it comes from: (fork name, nodes in between)."""
    count = 0
    p = g.producer(edge)
    while p is not None and count < 10_000:
        if base_op(p.op_type) in FORK_OPS or len(p.outs) > 1:
            return p.name, count
        if len(p.ins) != 1:
            return None, count
        count += 1
        p = g.producer(p.ins[0])
    return None, count


def join_sides(g: StreamGraph) -> dict[int, bool]:
    """Join input edge -> True on a short branch: the join waits on its long branch, not on these."""
    joins = g.join_edges()
    # the start of the first frame decides it: stop once every join has taken a quarter of a frame
    sim = simulate(g, {e: None for e in joins}, frames=1, track_waits=True,
                   stop_after_reads={e: max(1, g.edges[e].tokens // 4) for e in joins})
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
        other_len = max([_branch(g, o)[1] for o in join.ins if o != e] + [0])
        need[e] = max(DEFAULT_DEPTH, int(ref.max_occupancy[e]) + 1 + PIPELINE_SLACK * (other_len + 1))
    return ref, need


def _plan(g: StreamGraph, need: dict[int, int], ref: SimResult | None, fpgapart: str) -> FifoPlan:
    fifos: list[JoinFifo] = []
    for e, depth in need.items():
        edge = g.edges[e]
        fork, n_between = _branch(g, e)
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
    on_graph = depths_on_graph(model, g)
    if depths is not None:
        for e in g.join_edges():
            edge = g.edges[e]
            if edge.dst in depths:
                d = depths[edge.dst]
                on_graph[e] = max(DEFAULT_DEPTH, d[min(edge.dst_port, len(d) - 1)])
    joins = g.join_edges()
    sim = simulate(g, {e: on_graph[e] for e in joins}, frames)
    if reference is not None and reference.interval > 0:
        planned = {(f.join, f.port): f.depth for f in reference.fifos}
        need = {e: planned.get((g.edges[e].dst, g.edges[e].dst_port), DEFAULT_DEPTH) for e in joins}
        ref_interval = reference.interval
    else:
        ref, need = _stall_free_depths(g, frames)
        ref_interval = ref.interval

    def describe(e: int) -> str:
        edge = g.edges[e]
        fork, _ = _branch(g, e)
        origin = f"fed by {edge.src}" + (f" from {fork}" if fork and fork != edge.src else "")
        return (f"the FIFO on input {edge.dst_port} of {edge.dst} ({origin}) has depth {on_graph[e]} "
                f"but needs {need[e]}")

    short = [e for e in joins if on_graph[e] < need[e]]
    if sim.deadlock:
        culprits = [e for e in sim.full_edges if e in joins] or short
        what = "; ".join(describe(e) for e in culprits) or "no join FIFO is full"
        msg = (f"The dataflow graph deadlocks at cycle {sim.cycles:,} of the stream model: {what}, so "
               "re-run 'bnnflow fold' or raise inFIFODepths in the folding config.")
        result = JoinCheck(False, msg, -1, -1, ref_interval, True)
    elif sim.interval > ref_interval:
        what = "; ".join(describe(e) for e in short) or "a join FIFO fills"
        msg = (f"The join FIFOs stall the pipeline: {sim.interval:,} instead of {ref_interval:,} cycles per "
               f"frame because {what}, so re-run 'bnnflow fold' or raise inFIFODepths in the folding config.")
        result = JoinCheck(False, msg, sim.latency, sim.interval, ref_interval, False)
    else:
        result = JoinCheck(True, f"{len(joins)} join FIFOs: no deadlock, no stall ({sim.interval:,} cycles "
                                 f"per frame, first frame after {sim.latency:,} cycles).",
                           sim.latency, sim.interval, ref_interval, False)
    if raise_error and not result.ok:
        raise BnnflowError(result.message)
    return result


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


__all__ = ["stream_graph", "simulate", "size_join_fifos", "default_fifo_plan", "check_join_fifos",
           "apply_fifo_depths", "FifoPlan", "JoinFifo", "JoinCheck", "fifo_cost", "dwc_cost", "DEFAULT_DEPTH",
           "PIPELINE_SLACK"]
