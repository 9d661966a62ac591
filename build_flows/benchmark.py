"""`bnnflow benchmark`: accuracy vs estimated FPS of every model at three widths on one board.

For each design (CNV-W1A1, ResNetE, BinaryDenseNet at three widths each) the worker builds up
to specialize_layers (reusing an up-to-date build folder in the benchmark folder), runs the
folding search (bnnflow.build_flows.folding), applies the searched folding through the normal
flow up to FINN's estimate reports, and collects:

* accuracy: meta['test_top1'] of models/checkpoints/<model>-<variant>.pt when it exists (the
  build then uses those weights), else "untrained";
* estimated FPS and latency: FINN's estimate reports (latency = FINN's critical path, which
  assumes no overlap between layers, so it is pessimistic);
* LUT and BRAM: FINN's per-layer estimates plus the FIFOs and width converters FINN will add
  (bnnflow's FIFO model), as a share of the whole device;
* binary MACs per image: FINN's op count op_mac_1bx1b (one MAC = one XNOR + popcount add);
* compute bound: the binary MAC lanes the LUT budget allows times the clock, where one lane
  (one PE*SIMD of an XNOR MVAU) costs what FINN's own MVAU_hls LUT model charges per extra
  PE*SIMD at SIMD=32 (6.9 LUTs in finn-plus 1.6.1: XNOR, popcount adder tree, accumulator
  share); the per-layer constant (300 LUTs), thresholds and stream logic are not lanes. The share is
  binary MACs per image * FPS / bound.

Builds run in a process pool (2 by default; spawn, so every worker has its own FINN state)
and are cached: a re-run only re-does what changed.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from bnnflow.atomic import write_json, write_text
from bnnflow.catalog import MODEL_TITLES
from bnnflow.errors import BnnflowError

# CNV-W1A1 first, then the deeper networks; three widths each
DESIGNS: list[tuple[str, str]] = [
    ("cnv", "tiny"), ("cnv", "small"), ("cnv", "default"),
    ("resnete", "small"), ("resnete", "default"), ("resnete", "wide"),
    ("densenet", "small"), ("densenet", "default"), ("densenet", "wide"),
]
TITLES = MODEL_TITLES
RESULT_FILE = "bench_result.json"
RESULT_VERSION = 4  # 3: keyed by the build identity; 4: the stream model's FPS and latency
# rough relative cost of a build (streamlining dominates), to start the long ones first
COST = {"cnv": 1, "resnete": 4, "densenet": 4}
VARIANT_COST = {"tiny": 0.5, "small": 0.8, "default": 1.0, "wide": 1.3}


def checkpoint_for(model: str, variant: str) -> tuple[Path | None, float | None]:
    from bnnflow.models.checkpoint import committed_checkpoint, recorded_top1

    path = committed_checkpoint(model, variant)
    return (path, recorded_top1(path)) if path is not None else (None, None)


def lane_luts(fpgapart: str, simd: int = 32) -> float:
    """LUTs FINN's MVAU_hls model charges per extra XNOR-popcount lane (PE*SIMD) at this SIMD."""
    from bnnflow import compat

    compat.finn_ready()
    from onnx import helper
    from qonnx.custom_op.registry import getCustomOp

    def luts(pe: int) -> float:
        node = helper.make_node("MVAU_hls", ["i", "w"], ["o"], domain="finn.custom_op.fpgadataflow.hls",
                                backend="fpgadataflow", MW=1152, MH=128, PE=pe, SIMD=simd,
                                inputDataType="BINARY", weightDataType="BINARY", outputDataType="UINT11",
                                accDataType="UINT11", binaryXnorMode=1, noActivation=1, resType="lut",
                                mem_mode="internal_decoupled", ram_style="block")
        return float(getCustomOp(node).lut_estimation(fpgapart))

    return (luts(2) - luts(1)) / simd


def compute_bound(board, lut_budget: float) -> tuple[float, float]:
    """(LUTs per lane, binary MACs per second the LUT budget allows at the board clock)."""
    per_lane = lane_luts(board.part)
    return per_lane, math.floor(lut_budget / per_lane) * board.clock_mhz * 1e6


def run_design(model: str, variant: str, board_name: str, bench_dir: str, force: bool = False,
               lut_max: float | None = None, bram_max: float | None = None) -> dict:
    """One design, in a worker process: build with the folding search to the estimates (cached); its row."""
    t0 = time.time()
    from rich.console import Console

    from bnnflow.hw.boards import get_board

    from . import flow
    from .build import ensure_build
    from .build_folding import FOLD_REPORT_FILE
    from .identity import AUTO_FOLDING, BuildRequest

    board = get_board(board_name)
    out = Path(bench_dir) / f"{model}-{variant}-{board.name}"
    ckpt, acc = checkpoint_for(model, variant)
    row = {"model": model, "title": TITLES[model], "variant": variant, "accuracy": acc,
           "checkpoint": str(ckpt) if ckpt else None, "out": str(out)}
    req = BuildRequest(model=model, variant=variant, board=board.name, checkpoint=ckpt, out=out, force=force,
                       folding=Path(AUTO_FOLDING), lut_max=lut_max, bram_max=bram_max)
    try:
        # the benchmark owns its cache: a cached build of this design with other weights is rebuilt
        out, reused, _ = ensure_build(req, flow.ESTIMATE_STEP, Console(quiet=True), replace_other=True)
        key = {"version": RESULT_VERSION, "identity": flow.BuildState(out).data.get("identity")}
        cached = out / RESULT_FILE
        if reused and cached.exists():
            old = json.loads(cached.read_text())
            if old.get("key") == key:
                return {**old["row"], "cached": True, "seconds": round(time.time() - t0, 1)}
        row.update(_design_row(out, board, json.loads((out / FOLD_REPORT_FILE).read_text())))
        write_json(cached, {"key": key, "row": row})
    except BnnflowError as exc:
        row.update({"fits": False, "error": str(exc)})
    row.update({"cached": False, "seconds": round(time.time() - t0, 1)})
    return row


def _design_row(out: Path, board, search: dict) -> dict:
    """A built design's figures: FINN's estimates (summary.json, op counts) and the search's report."""
    from . import flow

    summary = json.loads((out / "summary.json").read_text())
    ops = flow.read_report(out, "op_and_param_counts.json").get("total", {})
    # the summary's totals include the FIFOs and width converters (bnnflow's model of them)
    lut = summary["total"]["LUT"]
    bram = summary["total"]["BRAM_18K"]
    per_lane, bound = compute_bound(board, search["budget"]["LUT"])
    bin_macs = float(ops.get("op_mac_1bx1b", 0.0))
    plan = search.get("fifos")
    return {
        "fits": bool(search["fits"] and summary["fits"]), "fps": summary["fps"], "latency_ms": summary["latency_ms"],
        "sim_fps": summary.get("sim_fps"), "sim_latency_ms": summary.get("sim_latency_ms"),
        "max_cycles": summary["max_cycles"], "bottleneck": summary["bottleneck"],
        "LUT": lut, "BRAM_18K": bram, "DSP": summary["total"]["DSP"],
        "LUT_pct": 100 * lut / board.lut, "BRAM_pct": 100 * bram / board.bram18,
        "fifo_lut": search["fifo_and_dwc"]["LUT"], "fifo_bram": search["fifo_and_dwc"]["BRAM_18K"],
        "binary_macs": bin_macs, "other_macs": float(sum(v for k, v in ops.items()
                                                         if k.startswith("op_mac") and k != "op_mac_1bx1b")),
        "lut_per_lane": per_lane, "bound_macs_per_s": bound,
        "compute_bound_pct": 100 * bin_macs * summary["fps"] / bound if bound else 0.0,
        "search_fps": search["fps"], "stream_model_interval": plan["interval_cycles"] if plan else None,
        "stream_model_latency": plan["latency_cycles"] if plan else None, "folding": search["config"], "error": None,
    }


def select_designs(only: list[str] | None) -> list[tuple[str, str]]:
    if not only:
        return list(DESIGNS)
    picked = []
    for item in only:
        model, _, variant = item.partition("/")
        from bnnflow.models.zoo import get_variant

        if variant:
            get_variant(model, variant)
            picked.append((model, variant))
        else:
            get_variant(model)
            picked += [d for d in DESIGNS if d[0] == model]
    return [d for d in DESIGNS if d in picked] + [d for d in picked if d not in DESIGNS]


def run_benchmark(board_name: str = "pynq-z2", bench_dir: Path = Path("build/benchmark"), jobs: int = 2,
                  only: list[str] | None = None, force: bool = False, console=None, on_done=None,
                  lut_max: float | None = None, bram_max: float | None = None) -> dict:
    from bnnflow.hw.boards import get_board

    board = get_board(board_name)
    board.budget(lut_max, bram_max)  # validates the limits
    limits = (lut_max, bram_max)
    designs = select_designs(only)
    bench_dir = Path(bench_dir).resolve()
    bench_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    order = sorted(designs, key=lambda d: -COST.get(d[0], 2) * VARIANT_COST.get(d[1], 1.0))
    rows: dict[tuple[str, str], dict] = {}
    if jobs <= 1:
        for m, v in order:
            rows[(m, v)] = run_design(m, v, board.name, str(bench_dir), force, *limits)
            if on_done:
                on_done(rows[(m, v)])
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(run_design, m, v, board.name, str(bench_dir), force, *limits): (m, v)
                       for m, v in order}
            for fut in as_completed(futures):
                rows[futures[fut]] = fut.result()
                if on_done:
                    on_done(rows[futures[fut]])
    ordered = [rows[d] for d in designs]
    wall = time.time() - t0
    report = {"board": board.name, "part": board.part, "clock_mhz": board.clock_mhz,
              "limits": {"LUT": board.lut_max if lut_max is None else lut_max,
                         "BRAM": board.bram_max if bram_max is None else bram_max}, "wall_seconds": round(wall, 1),
              "jobs": jobs, "rows": ordered}
    write_json(bench_dir / "benchmark.json", report)
    write_text(bench_dir / "benchmark.md", markdown_table(report) + "\n")
    return report


def accuracy_text(row: dict) -> str:
    return f"{100 * row['accuracy']:.1f} %" if row.get("accuracy") is not None and row["accuracy"] <= 1 else \
        (f"{row['accuracy']:.1f} %" if row.get("accuracy") is not None else "untrained")


def sim_fps_text(row: dict) -> str:
    if row.get("sim_fps") is None:
        return "–"
    return "deadlock" if row["sim_fps"] == 0 else f"{row['sim_fps']:,.0f}"


def _sim_latency(row: dict) -> str:
    return "–" if row.get("sim_latency_ms") is None else f"{row['sim_latency_ms']:.2f} ms"


def markdown_table(report: dict) -> str:
    lines = [f"Estimates on the {report['board']} ({report['part']}, {report['clock_mhz']:.0f} MHz), folding "
             f"searched by bnnflow within {report['limits']['LUT']:.0%} LUT / {report['limits']['BRAM']:.0%} BRAM "
             "of the device (FIFOs and width converters included).",
             "",
             "| model | variant | accuracy | est. FPS | sim. FPS | latency | sim. latency | LUT % | BRAM % | "
             "compute-bound % | binary MMAC/img |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if r.get("error"):
            lines.append(f"| {r['title']} | {r['variant']} | {accuracy_text(r)} | does not fit | – | – | – | – | – | – "
                         "| – |")
            continue
        lines.append(f"| {r['title']} | {r['variant']} | {accuracy_text(r)} | {r['fps']:,.0f} | {sim_fps_text(r)} | "
                     f"{r['latency_ms']:.2f} ms | {_sim_latency(r)} | {r['LUT_pct']:.1f} | {r['BRAM_pct']:.1f} | "
                     f"{r['compute_bound_pct']:.1f} | {r['binary_macs'] / 1e6:.1f} |")
    ok = [r for r in report["rows"] if not r.get("error")]
    if ok:
        r0 = ok[0]
        lines += ["", "est. FPS and latency are FINN's (slowest layer; critical path with no overlap between layers); "
                      "sim. FPS and sim. latency come from bnnflow's cycle-level stream model of the folded design "
                      "with its FIFO depths (steady state; the first image's result). Compute-bound % = "
                      f"binary MACs/image x FPS / (LUT budget / {r0['lut_per_lane']:.1f} LUT per XNOR-popcount lane "
                      f"x {report['clock_mhz']:.0f} MHz = {r0['bound_macs_per_s'] / 1e9:.0f} GMAC/s); one lane = "
                      "one PE*SIMD of an XNOR MVAU as FINN's MVAU_hls LUT model charges it."]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if not r.get("error")]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    markers = {"cnv": "o", "resnete": "s", "densenet": "^"}
    colors = {"cnv": "tab:blue", "resnete": "tab:orange", "densenet": "tab:green"}
    untrained = all(r.get("accuracy") is None for r in rows)
    for model in markers:
        mine = [r for r in rows if r["model"] == model]
        if not mine:
            continue
        xs = [r["fps"] for r in mine]
        ys = [(100 * r["accuracy"] if r["accuracy"] <= 1 else r["accuracy"]) if r.get("accuracy") is not None
              else 10.0 for r in mine]
        trained = [r.get("accuracy") is not None for r in mine]
        # a line joins only measured accuracies (untrained points sit at chance, they are no trend)
        measured = [(x, y) for x, y, t in zip(xs, ys, trained) if t]
        if len(measured) > 1:
            ax.plot(*zip(*measured), "-", color=colors[model], alpha=0.4)
        for x, y, t, r in zip(xs, ys, trained, mine):
            ax.scatter([x], [y], marker=markers[model], s=70, color=colors[model] if t else "white",
                       edgecolors=colors[model], zorder=3)
            # untrained points share one height: stagger their labels per model
            dy = 6 + 14 * list(markers).index(model) if not t else 6
            ax.annotate(r["variant"], (x, y), textcoords="offset points", xytext=(0, dy), fontsize=7,
                        ha="center", color=colors[model])
        ax.scatter([], [], marker=markers[model], color=colors[model], label=TITLES[model])
        ax2.scatter(xs, [r["compute_bound_pct"] for r in mine], marker=markers[model], color=colors[model],
                    s=[20 + 2 * r["binary_macs"] / 1e6 for r in mine], alpha=0.8)
        ax2.scatter([], [], marker=markers[model], color=colors[model], label=TITLES[model])
        for r in mine:
            ax2.annotate(f"{r['variant']}: LUT {r['LUT_pct']:.0f}%, BRAM {r['BRAM_pct']:.0f}%",
                         (r["fps"], r["compute_bound_pct"]), textcoords="offset points", xytext=(7, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"estimated FPS on {report['board']} at {report['clock_mhz']:.0f} MHz")
    ax.set_ylabel("CIFAR-10 test top-1 (%)")
    title = "accuracy vs estimated throughput"
    ax.set_ylim(0, 100)
    if untrained:
        title += "\nuntrained: no checkpoints yet (points drawn at chance, 10 %)"
    elif any(r.get("accuracy") is None for r in rows):
        title += "\nhollow = untrained (drawn at chance, 10 %)"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax2.set_xscale("log")
    ax2.set_xlabel("estimated FPS")
    ax2.set_ylabel("share of the LUT compute bound (%)")
    ax2.set_title("binary MAC/s vs what the LUT budget allows (size ~ MACs/image)", fontsize=10)
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
