"""The stream graph of a folded FINN dataflow graph: one process per node, one edge per stream.

Each process gets a per-frame program (bnnflow.build_flows.fifos explains the model): a
sequential node reads and writes on fixed steps of its loop nest, a sliding-window generator
is described by the input element each output needs and the line buffer it has. Streams whose
two ends disagree on the width get the data-width converter FINN's InsertDWC will put there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bnnflow import compat
from bnnflow.errors import BnnflowError

compat.finn_ready()

from qonnx.custom_op.registry import getCustomOp  # noqa: E402

from finn.util.fpgadataflow import is_hls_node, is_rtl_node  # noqa: E402

DEFAULT_DEPTH = 2  # FINN's InsertFIFO(create_shallow_fifos=True) puts this on every other stream
JOIN_OPS = ("ElementwiseAdd", "StreamingConcat")
FORK_OPS = ("DuplicateStreams",)
ELEMENTWISE_OPS = ("Thresholding", "DuplicateStreams", "ElementwiseAdd", "ElementwiseMul", "ElementwiseSub",
                   "ElementwiseMax", "ElementwiseMin")  # one element in on every input, one out, per step
WINDOW_OP = "ConvolutionInputGenerator"
DWC_OP = "StreamingDataWidthConverter"
DWC_PREFIX = "DWC("  # name of a converter FINN will insert: DWC(producer->consumer)
DWC_TENSOR_SUFFIX = "_dwc"
MAX_BRANCH_WALK = 10_000  # nodes to walk up from a join before giving up on finding its fork


def base_op(op_type: str) -> str:
    for suffix in ("_hls", "_rtl"):
        if op_type.endswith(suffix):
            return op_type[: -len(suffix)]
    return op_type


def is_hw(node) -> bool:
    return is_hls_node(node) or is_rtl_node(node)


def _tokens(shape) -> int:
    return int(np.prod(shape[:-1]))


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


def branch_of(g: StreamGraph, edge: int) -> tuple[str | None, int]:
    """Walk up from a join input to the fork it comes from: (fork name, nodes in between)."""
    count = 0
    p = g.producer(edge)
    while p is not None and count < MAX_BRANCH_WALK:
        if base_op(p.op_type) in FORK_OPS or len(p.outs) > 1:
            return p.name, count
        if len(p.ins) != 1:
            return None, count
        count += 1
        p = g.producer(p.ins[0])
    return None, count


# --------------------------------------------------------------------------- node programs

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


def _mvau(inst, in_tokens, out_tokens):
    # reads its SIMD-folds in the first of its PE-folds only, writes at the end of every SIMD-fold
    pixels = int(np.prod(inst.get_nodeattr("numInputVectors")))
    sf = inst.get_nodeattr("MW") // inst.get_nodeattr("SIMD")
    nf = inst.get_nodeattr("MH") // inst.get_nodeattr("PE")
    idx = np.arange(pixels * nf * sf)
    return _sequential(idx.size, [(idx // sf) % nf == 0], [idx % sf == sf - 1])


def _elementwise(inst, in_tokens, out_tokens):
    if not all(n == out_tokens[0] for n in in_tokens + out_tokens):
        return None
    n = out_tokens[0]
    return _sequential(n, [np.ones(n, bool)] * len(in_tokens), [np.ones(n, bool)] * len(out_tokens))


def _concat(inst, in_tokens, out_tokens):
    # per pixel: all SIMD-folds of input 0, then of input 1, ...
    simd = inst.get_nodeattr("SIMD")
    folds = [c // simd for c in inst.get_nodeattr("ChannelsPerStream")]
    pixels = out_tokens[0] // sum(folds)
    port = np.tile(np.repeat(np.arange(len(folds)), folds), pixels)
    return _sequential(port.size, [port == i for i in range(len(folds))], [np.ones(port.size, bool)])


def _padding(inst, in_tokens, out_tokens):
    h, w = inst.get_nodeattr("ImgDim")
    top, left, bottom, right = inst.get_nodeattr("Padding")
    cf = inst.get_nodeattr("NumChannels") // inst.get_nodeattr("SIMD")
    y = np.arange(h + top + bottom)[:, None, None]
    x = np.arange(w + left + right)[None, :, None]
    inside = (y >= top) & (y < top + h) & (x >= left) & (x < left + w) & np.ones((1, 1, cf), bool)
    inside = inside.reshape(-1)
    return _sequential(inside.size, [inside], [np.ones(inside.size, bool)])


def _pool(inst, in_tokens, out_tokens):
    k = int(np.prod(inst.get_nodeattr("KernelSize")))
    n = in_tokens[0]
    return _sequential(n, [np.ones(n, bool)], [np.arange(n) % k == k - 1])


def _label_select(inst, in_tokens, out_tokens):
    n = in_tokens[0]
    return _sequential(n, [np.ones(n, bool)], [np.arange(n) >= n - out_tokens[0]])


def _global_acc_pool(inst, in_tokens, out_tokens):
    n, m = in_tokens[0], out_tokens[0]
    return _sequential(n + m, [np.arange(n + m) < n], [np.arange(n + m) >= n])


_PROGRAMS = {"MVAU": _mvau, "StreamingConcat": _concat, "FMPadding": _padding, "Pool": _pool,
             "LabelSelect": _label_select, "GlobalAccPool": _global_acc_pool,
             **{op: _elementwise for op in ELEMENTWISE_OPS}}


def _program(inst, op: str, in_tokens: list[int], out_tokens: list[int]):
    """(steps, reads, writes) of one frame of a sequential FINN node (None: no model for it)."""
    make = _PROGRAMS.get(op)
    return None if make is None else make(inst, in_tokens, out_tokens)


# --------------------------------------------------------------------------- sliding-window generator

def _window_inputs(inst) -> tuple[np.ndarray, np.ndarray, int]:
    """Per output element, the last and first input element of its window; input elements."""
    h, w = inst.get_nodeattr("IFMDim")
    oh, ow = inst.get_nodeattr("OFMDim")
    kh, kw = inst.get_nodeattr("ConvKernelDim")
    sh, sw = inst.get_nodeattr("Stride")
    dh, dw = inst.get_nodeattr("Dilation")
    cf = inst.get_nodeattr("IFMChannels") // inst.get_nodeattr("SIMD")
    oy = np.arange(oh).reshape(-1, 1, 1, 1, 1)
    ox = np.arange(ow).reshape(1, -1, 1, 1, 1)
    if inst.select_impl_style() == "parallel" or (kh == 1 and kw == 1):
        # one element = a whole window of SIMD channels: order (oy, ox, cf)
        f = np.arange(cf).reshape(1, 1, -1)
        oy, ox = oy[:, :, 0, 0, 0][:, :, None], ox[:, :, 0, 0, 0][:, :, None]
        last = ((oy * sh + (kh - 1) * dh) * w + ox * sw + (kw - 1) * dw) * cf + f
        first = ((oy * sh) * w + ox * sw) * cf + f
        return last.reshape(-1), first.reshape(-1), h * w * cf
    ky, kx, f = np.arange(kh), np.arange(kw), np.arange(cf)
    if inst.get_nodeattr("depthwise"):  # (oy, ox, cf, ky, kx)
        ky, kx, f = ky.reshape(1, 1, 1, -1, 1), kx.reshape(1, 1, 1, 1, -1), f.reshape(1, 1, -1, 1, 1)
    else:  # (oy, ox, ky, kx, cf)
        ky, kx, f = ky.reshape(1, 1, -1, 1, 1), kx.reshape(1, 1, 1, -1, 1), f.reshape(1, 1, 1, 1, -1)
    idx = (((oy * sh + ky * dh) * w + ox * sw + kx * dw) * cf + f).reshape(-1)
    return idx, idx, h * w * cf


def _swg_model(inst, in_tokens: int, out_tokens: int, overlap: bool = True) -> dict | None:
    """Input element needed by each output element, oldest element still needed, line buffer depth.

    overlap=False: the next frame is read only once this frame's last output has left, as Verilator
    shows for ConvolutionInputGenerator_rtl (cycles per image = first image's cycles + 1; README,
    `verify --sim`): the reads are capped at the frame's end by lowering `oldest` to in - buffer."""
    last, first, expected_in = _window_inputs(inst)
    if last.size != out_tokens or in_tokens != expected_in:
        return None
    need = np.maximum.accumulate(last)
    oldest = np.append(np.minimum.accumulate(first[::-1])[::-1], in_tokens)
    span = int(np.max(need - oldest[:-1])) + 1
    buffer = max(int(inst.get_buffer_depth()), span)
    if not overlap:  # rc - oldest < buffer then also means rc < in_tokens until the frame's last output
        oldest[:-1] = np.minimum(oldest[:-1], in_tokens - buffer)
    return {"need": need.astype(np.int64), "oldest": oldest.astype(np.int64), "buffer": buffer,
            "in": in_tokens, "out": out_tokens}


# --------------------------------------------------------------------------- building the graph

def _hw_nodes(model) -> list:
    nodes = [n for n in model.graph.node if is_hw(n)]
    if len(nodes) != len(model.graph.node):
        other = sorted({n.op_type for n in model.graph.node if not is_hw(n)})
        raise BnnflowError(f"The FIFO model needs a graph of FINN HW layers only, but it has {', '.join(other)}: "
                           "use the model saved after the specialize_layers step.")
    return nodes


class _GraphBuilder:
    """Collects edges and processes node by node; every input stream first, then the outputs."""

    def __init__(self, model, programs: bool):
        self.model, self.programs = model, programs
        self.nodes = _hw_nodes(model)
        self.insts = {n.name: getCustomOp(n) for n in self.nodes}
        self.producers = {t: (n.name, q) for n in self.nodes for q, t in enumerate(n.output)}
        self.in_ports: dict[str, list[int]] = {n.name: [] for n in self.nodes}
        self.out_ports: dict[str, list[int | None]] = {n.name: [None] * len(n.output) for n in self.nodes}
        self.edges: list[Edge] = []
        self.procs: list[Proc] = []
        self.exp_cycles: dict[str, int] = {}
        self.out_edge = -1

    def add_edge(self, **kw) -> int:
        self.edges.append(Edge(index=len(self.edges), **kw))
        return self.edges[-1].index

    def connect_inputs(self, n) -> None:
        inst = self.insts[n.name]
        for i, t in enumerate(n.input):
            if not t or self.model.get_initializer(t) is not None:
                continue  # weights and thresholds live in the node
            tok, width = _tokens(inst.get_folded_input_shape(i)), int(inst.get_instream_width(i))
            if t not in self.producers:  # the accelerator's input
                self.in_ports[n.name].append(self.add_edge(tensor=t, src=None, src_port=0, dst=n.name,
                                                           dst_port=i, tokens=tok, width=width))
            else:
                self.connect(t, n.name, i, tok, width)

    def connect(self, t: str, dst: str, i: int, tok: int, width: int) -> None:
        src, q = self.producers[t]
        sinst = self.insts[src]
        stok, swidth = _tokens(sinst.get_folded_output_shape(q)), int(sinst.get_outstream_width(q))
        if stok * swidth != tok * width:
            raise BnnflowError(f"Stream {t} from {src} to {dst} carries {stok * swidth} bits per frame "
                               f"on one side and {tok * width} on the other: the folding is inconsistent.")
        if (stok, swidth) == (tok, width):
            e = self.add_edge(tensor=t, src=src, src_port=q, dst=dst, dst_port=i, tokens=tok, width=width)
            self.out_ports[src][q] = e
            self.in_ports[dst].append(e)
            return
        # FINN's InsertDWC will put a data-width converter here
        dwc = f"{DWC_PREFIX}{src}->{dst})"
        e1 = self.add_edge(tensor=t, src=src, src_port=q, dst=dwc, dst_port=0, tokens=stok, width=swidth)
        e2 = self.add_edge(tensor=t + DWC_TENSOR_SUFFIX, src=dwc, src_port=0, dst=dst, dst_port=i,
                           tokens=tok, width=width)
        self.out_ports[src][q] = e1
        self.in_ports[dst].append(e2)
        steps, reads, writes = _generic([stok], [tok], 0) if self.programs else (0, [], [])
        self.procs.append(Proc(dwc, DWC_OP, [e1], [e2], steps, reads, writes, virtual=True))
        self.exp_cycles[dwc] = steps

    def close_outputs(self, n) -> None:
        """Outputs nobody in the graph reads: the accelerator's output (or a dangling stream)."""
        inst = self.insts[n.name]
        graph_outputs = {o.name for o in self.model.graph.output}
        for q, t in enumerate(n.output):
            if self.out_ports[n.name][q] is None:
                e = self.add_edge(tensor=t, src=n.name, src_port=q, dst=None, dst_port=0,
                                  tokens=_tokens(inst.get_folded_output_shape(q)),
                                  width=int(inst.get_outstream_width(q)))
                self.out_ports[n.name][q] = e
                if t in graph_outputs:
                    self.out_edge = e

    def add_proc(self, n) -> None:
        inst = self.insts[n.name]
        proc = Proc(n.name, n.op_type, self.in_ports[n.name], list(self.out_ports[n.name]))
        cycles = int(inst.get_exp_cycles())
        self.exp_cycles[n.name] = cycles
        if self.programs:
            _give_program(proc, inst, [self.edges[e].tokens for e in proc.ins],
                          [self.edges[e].tokens for e in proc.outs], cycles)
        self.procs.append(proc)

    def graph(self) -> StreamGraph:
        # keep FINN's (topological) order, with each converter just before its consumer
        order = {n.name: i for i, n in enumerate(self.nodes)}
        self.procs.sort(key=lambda p: order[p.name] if not p.virtual else order[self.edges[p.outs[0]].dst] - 0.5)
        out_edge = self.out_edge if self.out_edge >= 0 else self.procs[-1].outs[0]
        return StreamGraph(self.procs, self.edges, out_edge, self.exp_cycles)


def _give_program(proc: Proc, inst, in_tok: list[int], out_tok: list[int], cycles: int) -> None:
    """A window generator's model, else the node's loop program, else reads and writes spread evenly."""
    op = base_op(proc.op_type)
    if op == WINDOW_OP and len(in_tok) == 1 and len(out_tok) == 1:
        proc.swg = _swg_model(inst, in_tok[0], out_tok[0], overlap=not proc.op_type.endswith("_rtl"))
    if proc.swg is not None:
        return
    prog = _program(inst, op, in_tok, out_tok) or _generic(in_tok, out_tok, cycles)
    steps, reads, writes = prog
    if [int(r.sum()) for r in reads] != in_tok or [int(w.sum()) for w in writes] != out_tok:
        steps, reads, writes = _generic(in_tok, out_tok, cycles)  # the loop model does not fit the shapes
    proc.steps, proc.reads, proc.writes = steps, reads, writes


def stream_graph(model, programs: bool = True) -> StreamGraph:
    """The stream model of a folded FINN dataflow graph (all nodes specialised to _hls/_rtl).

    programs=False gives the streams and width converters only (enough for costs, not to simulate).
    """
    b = _GraphBuilder(model, programs)
    for n in b.nodes:
        b.connect_inputs(n)
    for n in b.nodes:
        b.close_outputs(n)
        b.add_proc(n)
    return b.graph()
