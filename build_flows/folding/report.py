"""The folding search's result for people (rich tables) and for files (fold_report.json)."""

from __future__ import annotations

from .. import fifos
from .search import FoldResult


def fold_report(result: FoldResult) -> dict:
    ev = result.evaluation
    plan = ev.fifo_plan
    sim = _simulated(result)
    return {"board": result.board.name, "limits": result.limits, "budget": result.budget,
            "max_cycles": ev.max_cycles, "fps": ev.fps, "bottleneck": ev.bottleneck, "latency_ms": ev.latency_ms,
            "sim_fps": sim[0] if sim else None, "sim_latency_ms": sim[1] if sim else None,
            "finn_total": ev.finn_total, "fifo_and_dwc": ev.extra, "total": ev.total,
            "utilisation": ev.utilisation(result.board), "fits": ev.fits,
            "fifos": plan.as_dict() if plan else None, "units": result.units, "options": result.options,
            "rounds": result.rounds, "seconds": round(result.seconds, 1)}


def _simulated(result: FoldResult) -> tuple[float, float] | None:
    """(FPS, first-image latency in ms) of the folding in the stream model, with its FIFO plan."""
    plan = result.evaluation.fifo_plan
    if plan is None or plan.interval <= 0:
        return None
    return fifos.stream_performance(plan.interval, plan.latency, result.board)


def _folding_text(attrs: dict) -> str:
    parts = []
    for k in ("PE", "SIMD"):
        if k in attrs:
            parts.append(f"{k}={attrs[k]}")
    if attrs.get("parallel_window"):
        parts.append("parallel window")
    if "mem_mode" in attrs and "SIMD" in attrs and "PE" in attrs:
        parts.append("weights " + ("embedded" if attrs["mem_mode"] == "internal_embedded" else
                                   {"block": "BRAM", "distributed": "LUTRAM"}.get(attrs.get("ram_style"), "auto")))
    if attrs.get("resType") == "dsp":
        parts.append("DSP mult")
    if "inFIFODepths" in attrs and max(attrs["inFIFODepths"]) > fifos.DEFAULT_DEPTH:
        parts.append("in FIFOs " + "/".join(str(d) for d in attrs["inFIFODepths"]))
    return ", ".join(parts)


def print_fold(result: FoldResult, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    ev = result.evaluation
    board = result.board
    table = Table(title=f"Chosen folding for {board.name} ({board.part}, {board.clock_mhz:.0f} MHz)")
    for col in ("layer", "folding", "cycles", "LUT", "BRAM18", "DSP"):
        table.add_column(col, justify="left" if col in ("layer", "folding") else "right")
    for name, r in ev.nodes.items():
        table.add_row(name, _folding_text(result.config.get(name, {})), f"{r['cycles']:,}", f"{r['LUT']:,.0f}",
                      f"{r['BRAM_18K']:.0f}", f"{r['DSP']:.0f}")
    console.print(table)
    plan = ev.fifo_plan
    totals = Table(title="Totals against the budget")
    for col in ("", "LUT", "BRAM18", "DSP"):
        totals.add_column(col, justify="right")
    totals.add_row("FINN layer estimates", f"{ev.finn_total['LUT']:,.0f}", f"{ev.finn_total['BRAM_18K']:.0f}",
                   f"{ev.finn_total['DSP']:.0f}")
    if plan is not None:
        totals.add_row(f"join FIFOs ({sum(1 for f in plan.fifos if f.depth > 2)})", f"{plan.join_lut:,}",
                       str(plan.join_bram), "0")
        other = "other FIFOs" if plan.every_fifo else "depth-2 FIFOs"
        totals.add_row(f"{other} ({plan.n_streams - len(plan.fifos)})", f"{plan.default_fifo_lut:,}",
                       str(plan.default_fifo_bram), "0")
        totals.add_row(f"width converters ({plan.n_dwc})", f"{plan.dwc_lut:,}", "0", "0")
    totals.add_row("total", f"{ev.total['LUT']:,.0f}", f"{ev.total['BRAM_18K']:.0f}", f"{ev.total['DSP']:.0f}")
    b = result.budget
    totals.add_row(f"budget (LUT {result.limits['LUT']:.0%}, BRAM {result.limits['BRAM']:.0%})",
                   f"{b['LUT']:,.0f}", f"{b['BRAM_18K']:.0f}", f"{b['DSP']:.0f}")
    u = ev.utilisation(board)
    totals.add_row("of device", f"{u['LUT']:.1%}", f"{u['BRAM_18K']:.1%}", f"{u['DSP']:.1%}")
    console.print(totals)
    console.print(f"Estimated {ev.fps:,.0f} FPS ({ev.max_cycles:,} cycles per image, slowest {ev.bottleneck}); "
                  f"searched {result.options:,} foldings of {result.units} units in {result.seconds:.1f} s.")
    _print_simulated(result, console)
    for line in fifos.describe_plan(plan) if plan else []:
        console.print(f"  join FIFO: {line}")


def _print_simulated(result: FoldResult, console) -> None:
    plan, sim = result.evaluation.fifo_plan, _simulated(result)
    if sim is None:
        return
    fps, latency_ms = sim
    below = fifos.below_estimate(fps, result.evaluation.fps)
    fifos_text = "every FIFO sized" if plan.every_fifo else "depth-2 FIFOs outside the joins"
    note = " [yellow]below FINN's estimate, which assumes no stalls[/]" if below else ", as FINN's estimate"
    console.print(f"Stream model ({fifos_text}): {fps:,.0f} FPS ({plan.interval:,} cycles/image){note}; "
                  f"first image after {latency_ms:.2f} ms ({plan.latency:,} cycles).")
    line = fifos.fifo_summary(plan)
    if line:
        console.print(f"  {line[0].upper()}{line[1:]}")


def print_comparison(cmp: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"{cmp['model']} on {cmp['board']}: FINN target_fps vs bnnflow search")
    for col in ("method", "est. FPS", "cycles", "LUT %", "BRAM %", "DSP %", "fits"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in cmp["rows"]:
        table.add_row(r["method"], f"{r['fps']:,.0f}", f"{r['max_cycles']:,}", f"{r['LUT_pct']:.1f}",
                      f"{r['BRAM_pct']:.1f}", f"{r['DSP_pct']:.1f}", "yes" if r["fits"] else "NO")
    console.print(table)
    if cmp.get("speedup_vs_best_baseline"):
        console.print(f"search / best fitting SetFolding: {cmp['speedup_vs_best_baseline']:.2f}x")
