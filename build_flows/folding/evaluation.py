"""A folded design scored as a whole: FINN's estimates plus the FIFOs and converters FINN will add."""

from __future__ import annotations

from dataclasses import dataclass

from bnnflow.hw.boards import Board

from bnnflow import compat

compat.finn_ready()

from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.custom_op.registry import getCustomOp  # noqa: E402

from finn.analysis.fpgadataflow.dataflow_performance import dataflow_performance  # noqa: E402
from finn.analysis.fpgadataflow.res_estimation import res_estimation  # noqa: E402
from finn.transformation.fpgadataflow.annotate_cycles import AnnotateCycles  # noqa: E402

from .. import fifos  # noqa: E402
from ..fifos import is_hw  # noqa: E402
from ..resources import RES, design_total, stream_resources  # noqa: E402
from ..resources import fits as design_fits  # noqa: E402


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
    extra = {r: float(v) for r, v in stream_resources(plan).items()}
    total = design_total(finn_total, extra)
    fits = design_fits(total, budget)
    max_cycles = int(perf["max_cycles"])
    return Evaluation(max_cycles=max_cycles, bottleneck=str(perf["max_cycles_node_name"]),
                      fps=board.clock_mhz * 1e6 / max_cycles,
                      latency_ms=perf["critical_path_cycles"] * board.clock_ns / 1e6, nodes=nodes,
                      finn_total=finn_total, extra=extra, total=total, budget=budget, fits=fits, fifo_plan=plan,
                      sim_interval=plan.interval if plan.interval > 0 else None,
                      sim_latency=plan.latency if plan.latency > 0 else None)
