"""Folding units and their legal, Pareto-optimal options, scored with FINN's own estimates.

A unit is one HW node, or a sliding-window generator together with the MVAU (or pool) it
feeds, so the two are folded together. See the package docstring for the rules.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from bnnflow.errors import BnnflowError

from bnnflow import compat

compat.finn_ready()

from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.custom_op.registry import getCustomOp  # noqa: E402

from finn.util.basic import MAX_ALLOWED_AP_INT_W  # noqa: E402
from finn.util.fpgadataflow import is_hls_node  # noqa: E402

from ..fifos import base_op, is_hw  # noqa: E402
from ..folding_check import hls_mvau_min_simd  # noqa: E402

MVAU_WWIDTH_MAX = 36  # FINN's DataflowBuildConfig.mvau_wwidth_max default
# FINN's own list of folding attributes (step_target_fps_parallelization), as the JSON carries them
HW_ATTRS = ["PE", "SIMD", "EmbFold", "SeqFold", "parallel_window", "ram_style", "ram_style_thresholds",
            "ram_style_mask", "depth", "impl_style", "resType", "mac_resource", "mem_mode",
            "runtime_writeable_weights", "depth_trigger_uram", "depth_trigger_bram"]
PE_OPS = ("Thresholding", "DuplicateStreams", "GlobalAccPool", "ReplicateStream")
ELEMENTWISE = ("ElementwiseAdd", "ElementwiseSub", "ElementwiseMul", "ElementwiseMax", "ElementwiseMin",
               "ElementwiseAnd", "ElementwiseOr", "ElementwiseXor", "ElementwiseDiv")
# the LUT / BRAM weighting sweep of the Lagrangian selection (share of the weight on LUT)


def divisors(n: int) -> list[int]:
    n = int(n)
    return [d for d in range(1, n + 1) if n % d == 0]

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
    if hls:  # FINN's rule beats the width preference: keep the narrowest SIMD it accepts
        low = hls_mvau_min_simd(mw)
        simds = [s for s in simds if s >= low] or [min(d for d in divisors(mw) if d >= low)]
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
