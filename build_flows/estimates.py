"""Per-layer estimate summary (LUT / BRAM / DSP / cycles) against a board's budget.

FINN's estimate reports come before its FIFO and data-width-converter insertion, so the
summary adds what those will cost (bnnflow's FIFO model, the same the folding search charges;
every FIFO at the depth the folded graph gives it) before it decides whether the design fits.
FINN's FPS and latency assume no stalls and no overlap between layers; the summary puts the
stream model's figures beside them: the steady-state FPS and first-image latency of the folded
graph with its FIFO depths (bnnflow.build_flows.fifos), which fall below FINN's when a FIFO is
too shallow somewhere.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from bnnflow.errors import BnnflowError
from bnnflow.hw.boards import Board

from . import flow
from .flow import read_report
from .resources import design_total, stream_resources
from .resources import fits as design_fits

# finn-plus 1.6.1's estimator returns LUT = 0 for these ops, so LUT totals undercount.
LUT_UNMODELLED = ("DuplicateStreams", "ElementwiseAdd", "Pool", "StreamingConcat", "FMPadding", "LabelSelect")


def summarize(out_dir: Path, board: Board, budget: dict[str, float] | None = None) -> dict:
    """Collect FINN's estimate reports of a build into one dict (also written as summary.json);
    `budget`: what the design must fit (default: the board's)."""
    res = read_report(out_dir, "estimate_layer_resources.json")
    cycles = read_report(out_dir, "estimate_layer_cycles.json")
    perf = read_report(out_dir, "estimate_network_performance.json")
    ops = read_report(out_dir, "op_and_param_counts.json")
    if not res or not perf:
        return {}
    layers = []
    for name, r in res.items():
        if name == "total":
            continue
        layers.append({"layer": name, "LUT": int(r.get("LUT", 0)), "BRAM_18K": int(r.get("BRAM_18K", 0)),
                       "DSP": int(r.get("DSP", 0)), "URAM": int(r.get("URAM", 0)),
                       "cycles": int(cycles.get(name, 0))})
    layer_total = {k: sum(layer[k] for layer in layers) for k in ("LUT", "BRAM_18K", "DSP", "URAM")}
    streams, sim = _streams(out_dir, board)
    total = design_total(layer_total, streams)
    budget = budget or board.budget()
    use = {k: total[k] / (getattr(board, k.lower(), 0) if k != "BRAM_18K" else board.bram18)
           for k in ("LUT", "BRAM_18K", "DSP") if (board.bram18 if k == "BRAM_18K" else getattr(board, k.lower()))}
    fits = design_fits(total, budget, ("LUT", "BRAM_18K", "DSP"))
    return {
        "board": board.name, "part": board.part, "clock_mhz": board.clock_mhz,
        "layers": layers, "layer_total": layer_total, "fifo_and_dwc": streams, "total": total,
        "utilisation": use, "fits": fits,
        "budget": budget,
        "fps": float(perf["estimated_throughput_fps"]),
        "latency_ms": float(perf["estimated_latency_ns"]) / 1e6,
        "bottleneck": perf.get("max_cycles_node_name"), "max_cycles": int(perf["max_cycles"]),
        "ops_per_image": ops.get("total_ops", {}) if isinstance(ops, dict) else {},
        "lut_unmodelled": sorted({l["layer"] for l in layers if l["LUT"] == 0
                                  and l["layer"].split("_")[0] in LUT_UNMODELLED}),
        **sim,
    }


def _streams(out_dir: Path, board: Board) -> tuple[dict, dict]:
    """(LUT/BRAM of the FIFOs and width converters FINN will add to the estimated graph, the stream
    model's FPS and latency of that graph with its FIFO depths)."""
    from qonnx.core.modelwrapper import ModelWrapper

    from .fifos import graph_fifo_plan, simulate_graph

    path = flow.intermediate_path(Path(out_dir), flow.ESTIMATE_STEP)
    if not path.exists():
        return {}, {}
    model = ModelWrapper(str(path))
    plan = graph_fifo_plan(model, board.part)
    costs = {**stream_resources(plan), "fifos": plan.n_streams, "dwcs": plan.n_dwc}
    try:
        sim = simulated_performance(simulate_graph(model), board)
    except BnnflowError:  # a graph the stream model cannot run (it says why in `bnnflow fold`): no figure
        sim = {}
    return costs, sim


def simulated_performance(sim, board: Board) -> dict:
    """summary.json's stream-model fields from a run of the folded graph (fifos.simulate_graph)."""
    if sim.deadlock:
        return {"sim_deadlock": True, "sim_fps": 0.0, "sim_latency_ms": None, "sim_interval_cycles": None,
                "sim_latency_cycles": None}
    from .fifos import stream_performance

    fps, latency_ms = stream_performance(sim.interval, sim.latency, board)
    return {"sim_deadlock": False, "sim_fps": fps, "sim_latency_ms": latency_ms, "sim_interval_cycles": int(sim.interval),
            "sim_latency_cycles": int(sim.latency)}


def _simulated_line(summary: dict) -> str | None:
    if "sim_fps" not in summary:
        return None
    if summary["sim_deadlock"]:
        return ("[red]The stream model deadlocks with this build's FIFO depths[/]: re-run 'bnnflow fold' (it sizes "
                "every FIFO) or raise inFIFODepths in the folding config.")
    from .fifos import below_estimate

    below = below_estimate(summary["sim_fps"], summary["fps"])
    note = (" [yellow]below FINN's estimate, which assumes no stalls[/]: FIFOs too shallow for the bursts "
            "(re-run 'bnnflow fold' to size every FIFO)" if below else ", as FINN's estimate")
    return (f"Stream model with this build's FIFO depths: {summary['sim_fps']:,.0f} FPS "
            f"({summary['sim_interval_cycles']:,} cycles/image){note}; first image after "
            f"{summary['sim_latency_ms']:.2f} ms (layers overlap).")


def print_summary(summary: dict, console: Console | None = None, per_layer: bool = True) -> None:
    console = console or Console()
    if not summary:
        console.print("[yellow]No estimate reports in this build yet.[/]")
        return
    if per_layer:
        table = Table(title=f"Estimates per layer on {summary['board']} ({summary['part']}, "
                            f"{summary['clock_mhz']:.0f} MHz)")
        for col in ("layer", "LUT", "BRAM18", "DSP", "cycles"):
            table.add_column(col, justify="left" if col == "layer" else "right")
        for layer in summary["layers"]:
            mark = " *" if layer["layer"] in summary["lut_unmodelled"] else ""
            table.add_row(layer["layer"], f"{layer['LUT']:,}{mark}", str(layer["BRAM_18K"]), str(layer["DSP"]),
                          f"{layer['cycles']:,}")
        console.print(table)
    t, b = summary["total"], summary["budget"]
    u = summary["utilisation"]
    totals = Table(title="Totals against the board budget (after the shell's share)")
    for col in ("", "LUT", "BRAM18", "DSP"):
        totals.add_column(col, justify="right")
    s = summary.get("fifo_and_dwc") or {}
    if s:
        lt = summary["layer_total"]
        totals.add_row("layers", f"{lt['LUT']:,}", str(lt["BRAM_18K"]), str(lt["DSP"]))
        totals.add_row(f"{s['fifos']} FIFOs, {s['dwcs']} width conv.", f"{s['LUT']:,}", str(s["BRAM_18K"]), "0")
    totals.add_row("estimated", f"{t['LUT']:,}", str(t["BRAM_18K"]), str(t["DSP"]))
    totals.add_row("budget", f"{int(b['LUT']):,}", str(int(b["BRAM_18K"])), str(int(b["DSP"])))
    totals.add_row("of device", f"{u['LUT']:.1%}", f"{u['BRAM_18K']:.1%}", f"{u['DSP']:.1%}")
    console.print(totals)
    verdict = "[green]fits[/]" if summary["fits"] else "[red]does NOT fit[/]"
    console.print(f"Design {verdict} the {summary['board']}; estimated {summary['fps']:,.0f} FPS, "
                  f"latency {summary['latency_ms']:.2f} ms; slowest layer {summary['bottleneck']} "
                  f"({summary['max_cycles']:,} cycles/image).")
    line = _simulated_line(summary)
    if line:
        console.print(line)
    if summary["lut_unmodelled"]:
        console.print("* finn-plus estimates 0 LUT for these layers (streams, adds, pools, padding): "
                      "LUT totals undercount.")
