"""Per-layer estimate summary (LUT / BRAM / DSP / cycles) against a board's budget.

FINN's estimate reports come before its FIFO and data-width-converter insertion, so the
summary adds what those will cost (bnnflow's FIFO model, the same the folding search charges)
before it decides whether the design fits.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

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
    streams = _stream_costs(out_dir, board)
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
    }


def _stream_costs(out_dir: Path, board: Board) -> dict:
    """LUT/BRAM of the FIFOs and width converters FINN will add to the estimated graph."""
    from qonnx.core.modelwrapper import ModelWrapper

    from .fifos import graph_fifo_plan

    path = flow.intermediate_path(Path(out_dir), flow.ESTIMATE_STEP)
    if not path.exists():
        return {}
    plan = graph_fifo_plan(ModelWrapper(str(path)), board.part)
    return {**stream_resources(plan), "fifos": plan.n_streams, "dwcs": plan.n_dwc}


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
    if summary["lut_unmodelled"]:
        console.print("* finn-plus estimates 0 LUT for these layers (streams, adds, pools, padding): "
                      "LUT totals undercount.")
