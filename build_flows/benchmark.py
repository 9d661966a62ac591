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

The designs are a sweep (build_flows/sweep.py): one task each on a Dask cluster (by default a
LocalCluster sized to this machine), build folders cached in the benchmark folder, so a re-run only
re-does what changed. The table and plot below serve `bnnflow sweep` too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bnnflow.atomic import write_json, write_text
from bnnflow.catalog import MODEL_TITLES

# CNV-W1A1 first, then the deeper networks; three widths each
DESIGNS: list[tuple[str, str]] = [
    ("cnv", "tiny"), ("cnv", "small"), ("cnv", "default"),
    ("resnete", "small"), ("resnete", "default"), ("resnete", "wide"),
    ("densenet", "small"), ("densenet", "default"), ("densenet", "wide"),
]
TITLES = MODEL_TITLES
# rough relative cost of a build (streamlining dominates), to start the long ones first
COST = {"cnv": 1, "resnete": 4, "densenet": 4}
VARIANT_COST = {"tiny": 0.5, "small": 0.8, "default": 1.0, "wide": 1.3}


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


def point_accuracy(checkpoint: Path | None) -> float | None:
    """The CIFAR-10 test top-1 a checkpoint records (`bnnflow train`'s manifest), None for random weights."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return None
    from bnnflow.models.checkpoint import recorded_top1

    return recorded_top1(checkpoint)


def design_row(out: Path, point) -> dict:
    """A built design's figures: FINN's estimates (summary.json, op counts) and, for a searched folding,
    the search's report; {"error": None} alone when the build stopped before the estimates."""
    from bnnflow.hw.boards import get_board

    from . import flow
    from .build_folding import FOLD_REPORT_FILE

    out = Path(out)
    if not (out / "summary.json").is_file() or flow.ESTIMATE_STEP not in flow.BuildState(out).done:
        return {"error": None}
    board = get_board(point.board)
    search = json.loads((out / FOLD_REPORT_FILE).read_text()) if point.folding == "auto" else None
    return _design_row(out, board, search, board.budget(point.lut_max, point.bram_max)["LUT"])


def _design_row(out: Path, board, search: dict | None, lut_budget: float) -> dict:
    """FINN's estimates (summary.json, op counts) and the folding search's report where there is one."""
    from . import flow

    summary = json.loads((out / "summary.json").read_text())
    ops = flow.read_report(out, "op_and_param_counts.json").get("total", {})
    # the summary's totals include the FIFOs and width converters (bnnflow's model of them)
    lut = summary["total"]["LUT"]
    bram = summary["total"]["BRAM_18K"]
    per_lane, bound = compute_bound(board, search["budget"]["LUT"] if search else lut_budget)
    bin_macs = float(ops.get("op_mac_1bx1b", 0.0))
    plan = (search or {}).get("fifos")
    streams = search["fifo_and_dwc"] if search else summary.get("fifo_and_dwc", {})
    return {
        "fits": bool((search is None or search["fits"]) and summary["fits"]),
        "fps": summary["fps"], "latency_ms": summary["latency_ms"],
        "sim_fps": summary.get("sim_fps"), "sim_latency_ms": summary.get("sim_latency_ms"),
        "max_cycles": summary["max_cycles"], "bottleneck": summary["bottleneck"],
        "LUT": lut, "BRAM_18K": bram, "DSP": summary["total"]["DSP"],
        "LUT_pct": 100 * lut / board.lut, "BRAM_pct": 100 * bram / board.bram18,
        "fifo_lut": streams.get("LUT"), "fifo_bram": streams.get("BRAM_18K"),
        "binary_macs": bin_macs, "other_macs": float(sum(v for k, v in ops.items()
                                                         if k.startswith("op_mac") and k != "op_mac_1bx1b")),
        "lut_per_lane": per_lane, "bound_macs_per_s": bound,
        "compute_bound_pct": 100 * bin_macs * summary["fps"] / bound if bound else 0.0,
        "search_fps": search["fps"] if search else None,
        "stream_model_interval": plan["interval_cycles"] if plan else None,
        "stream_model_latency": plan["latency_cycles"] if plan else None,
        "folding_config": search["config"] if search else None, "error": None,
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


def benchmark_points(board: str, only: list[str] | None, lut_max: float | None = None,
                     bram_max: float | None = None):
    """The benchmark's designs as sweep points: committed weights where they exist, searched folding."""
    from .sweep_spec import DesignPoint

    return [DesignPoint(model=m, variant=v, board=board, folding="auto", lut_max=lut_max, bram_max=bram_max)
            for m, v in select_designs(only)]


def run_benchmark(board_name: str = "pynq-z2", bench_dir: Path = Path("build/benchmark"), jobs: int | None = None,
                  only: list[str] | None = None, force: bool = False, console=None, on_done=None,
                  lut_max: float | None = None, bram_max: float | None = None, spec=None, on_counts=None) -> dict:
    """Every design of the benchmark through the sweep engine; `spec` (a sweep_cluster.ClusterSpec) says where
    (default: ClusterSpec(jobs=jobs), i.e. a LocalCluster; jobs=1 runs in this process)."""
    from bnnflow.hw.boards import get_board

    from .sweep import run_sweep
    from .sweep_cluster import ClusterSpec

    board = get_board(board_name)
    board.budget(lut_max, bram_max)  # validates the limits
    spec = spec or ClusterSpec(jobs=jobs)
    points = benchmark_points(board.name, only, lut_max, bram_max)
    # the benchmark's folders keep their plain names (MODEL-VARIANT-BOARD): one design each
    result = run_sweep(points, Path(bench_dir), spec, hashed=False, force=force, on_row=on_done, on_counts=on_counts,
                       priority=lambda p: COST.get(p.model, 2) * VARIANT_COST.get(p.variant, 1.0))
    report = {"board": board.name, "part": board.part, "clock_mhz": board.clock_mhz,
              "limits": {"LUT": board.lut_max if lut_max is None else lut_max,
                         "BRAM": board.bram_max if bram_max is None else bram_max},
              "wall_seconds": result["wall_seconds"], "jobs": spec.jobs, "cluster": spec.describe(),
              "rows": result["rows"]}
    write_report(report, Path(bench_dir), "benchmark")
    return report


def write_report(report: dict, folder: Path, name: str) -> None:
    """NAME.json (every row) and NAME.md (the table) in `folder`."""
    write_json(folder / f"{name}.json", report)
    write_text(folder / f"{name}.md", markdown_table(report) + "\n")


def accuracy_text(row: dict) -> str:
    return f"{100 * row['accuracy']:.1f} %" if row.get("accuracy") is not None and row["accuracy"] <= 1 else \
        (f"{row['accuracy']:.1f} %" if row.get("accuracy") is not None else "untrained")


def sim_fps_text(row: dict) -> str:
    if row.get("sim_fps") is None:
        return "–"
    return "deadlock" if row["sim_fps"] == 0 else f"{row['sim_fps']:,.0f}"


def _sim_latency(row: dict) -> str:
    return "–" if row.get("sim_latency_ms") is None else f"{row['sim_latency_ms']:.2f} ms"


# what tells a sweep's points of one network apart, as table columns (shown only where rows differ)
POINT_COLUMNS = {"board": "board", "folding": "folding", "weights": "weights", "stop_after": "stop after"}
STATUS_TEXT = {"error": "error", "failed": "failed", "lost": "lost (worker died)", "done": "no estimates",
               "stopped": "stopped"}


def has_figures(row: dict) -> bool:
    """Did the point reach FINN's estimates (a stopped build may have, before a missing vendor tool)?"""
    return row.get("fps") is not None and (not row.get("error") or row.get("status") == "stopped")


def varying_columns(rows: list[dict]) -> list[str]:
    return [k for k in POINT_COLUMNS if len({str(r.get(k)) for r in rows}) > 1]


def point_label(row: dict, varying: list[str]) -> str:
    """'tiny', or 'tiny, auto, pynq-z2' where the sweep varies more than the variant."""
    return ", ".join([row["variant"]] + [Path(str(row.get(k))).name for k in varying])


def markdown_table(report: dict) -> str:
    rows = report["rows"]
    varying = varying_columns(rows)
    heading = report.get("heading") or (
        f"Estimates on the {report['board']} ({report['part']}, {report['clock_mhz']:.0f} MHz), folding "
        f"searched by bnnflow within {report['limits']['LUT']:.0%} LUT / {report['limits']['BRAM']:.0%} BRAM "
        "of the device (FIFOs and width converters included).")
    extra = "".join(f" {POINT_COLUMNS[k]} |" for k in varying)
    lines = [heading, "",
             f"| model | variant |{extra} accuracy | est. FPS | sim. FPS | latency | sim. latency | LUT % | BRAM % | "
             "compute-bound % | binary MMAC/img |",
             "|---|---|" + "---|" * len(varying) + "---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        start = f"| {r['title']} | {r['variant']} |" + "".join(f" {_cell(r.get(k))} |" for k in varying)
        if not has_figures(r):
            label = STATUS_TEXT.get(r.get("status"), "does not fit")
            lines.append(f"{start} {accuracy_text(r)} | {label} | – | – | – | – | – | – | – |")
            continue
        lines.append(f"{start} {accuracy_text(r)} | {r['fps']:,.0f} | {sim_fps_text(r)} | "
                     f"{r['latency_ms']:.2f} ms | {_sim_latency(r)} | {r['LUT_pct']:.1f} | {r['BRAM_pct']:.1f} | "
                     f"{r['compute_bound_pct']:.1f} | {r['binary_macs'] / 1e6:.1f} |")
    ok = [r for r in rows if has_figures(r)]
    if ok:
        r0 = ok[0]
        lines += ["", "est. FPS and latency are FINN's (slowest layer; critical path with no overlap between layers); "
                      "sim. FPS and sim. latency come from bnnflow's cycle-level stream model of the folded design "
                      "with its FIFO depths (steady state; the first image's result). Compute-bound % = "
                      f"binary MACs/image x FPS / (LUT budget / {r0['lut_per_lane']:.1f} LUT per XNOR-popcount lane "
                      f"x {report['clock_mhz']:.0f} MHz = {r0['bound_macs_per_s'] / 1e9:.0f} GMAC/s); one lane = "
                      "one PE*SIMD of an XNOR MVAU as FINN's MVAU_hls LUT model charges it."]
    notes = [f"- {r['title']} {point_label(r, varying)}: {r['error']}" for r in rows
             if r.get("error") and r.get("status")]
    return "\n".join(lines + ([""] + notes if notes else []))


def _cell(value) -> str:
    return Path(str(value)).name if value is not None else "–"  # a folding/weights file by its name


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if has_figures(r)]
    varying = varying_columns(rows)
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
            ax.annotate(point_label(r, varying), (x, y), textcoords="offset points", xytext=(0, dy), fontsize=7,
                        ha="center", color=colors[model])
        ax.scatter([], [], marker=markers[model], color=colors[model], label=TITLES[model])
        ax2.scatter(xs, [r["compute_bound_pct"] for r in mine], marker=markers[model], color=colors[model],
                    s=[20 + 2 * r["binary_macs"] / 1e6 for r in mine], alpha=0.8)
        ax2.scatter([], [], marker=markers[model], color=colors[model], label=TITLES[model])
        for r in mine:
            ax2.annotate(f"{point_label(r, varying)}: LUT {r['LUT_pct']:.0f}%, BRAM {r['BRAM_pct']:.0f}%",
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
