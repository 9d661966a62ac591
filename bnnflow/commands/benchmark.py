"""`bnnflow benchmark`: accuracy vs estimated FPS of every model at three widths (table + plot)."""

from __future__ import annotations

from pathlib import Path

from bnnflow.cli_args import add_board_arg, add_budget_args, hidden_alias
from bnnflow.commands.sweep import add_cluster_args
from bnnflow.outputs import OutCheck

DEFAULT_DIR = Path("build/benchmark")


def add_parsers(sub) -> None:
    p = sub.add_parser("benchmark", help="accuracy vs estimated FPS of every model at three widths (table + plot)",
                       description="Builds ResNetE, BinaryDenseNet and CNV-W1A1 at three widths each to the "
                                   "estimates with the searched folding (one Dask task each, by default on a local "
                                   "cluster sized to this machine; build folders cached under --build), then prints "
                                   "and plots accuracy against estimated FPS on the board.")
    add_board_arg(p)
    add_budget_args(p)
    p.add_argument("--build", type=Path, metavar="DIR", default=DEFAULT_DIR,
                   help="folder of the designs' build folders (a cache); default: %(default)s")
    hidden_alias(p, "--dir", "build", type=Path)
    p.add_argument("--out", type=Path, help="plot (PNG) to write; default: BUILD/benchmark.png")
    p.set_defaults(check_outputs=OutCheck("plot"))
    hidden_alias(p, "--plot", "out", type=Path)
    p.add_argument("--only", nargs="*", metavar="MODEL[/VARIANT]", help="restrict to these models/variants")
    p.add_argument("--force", action="store_true", help="rebuild even up-to-date builds")
    add_cluster_args(p)


def print_report(report: dict, console) -> None:
    from rich.table import Table

    from bnnflow.build_flows.benchmark import STATUS_TEXT, accuracy_text, has_figures, sim_fps_text

    table = Table(title=f"bnnflow benchmark on {report['board']} ({report['clock_mhz']:.0f} MHz)")
    for col in ("model", "variant", "top-1", "est. FPS", "sim. FPS", "lat. ms", "LUT%", "BRAM%", "MMAC/img", "bound%", "s"):
        table.add_column(col, justify="left" if col in ("model", "variant") else "right")
    for r in report["rows"]:
        if not has_figures(r):
            label = STATUS_TEXT.get(r.get("status"), "error")
            table.add_row(r["title"], r["variant"], accuracy_text(r), f"[red]{label}[/]", "", "", "", "", "", "",
                          f"{r['seconds']:.0f}")
            continue
        table.add_row(r["title"], r["variant"], accuracy_text(r).replace("untrained", "untr."), f"{r['fps']:,.0f}", sim_fps_text(r), f"{r['latency_ms']:.2f}",
                      f"{r['LUT_pct']:.1f}", f"{r['BRAM_pct']:.1f}", f"{r['binary_macs'] / 1e6:.1f}",
                      f"{r['compute_bound_pct']:.1f}", f"{r['seconds']:.0f}" + (" (cached)" if r.get("cached") else ""))
    console.print(table)
    for r in report["rows"]:
        if r.get("error"):
            console.print(f"[yellow]{r['title']}/{r['variant']}:[/] {r['error']}")


def cmd_benchmark(args) -> int:
    from rich.console import Console

    from bnnflow.build_flows.benchmark import markdown_table, plot, run_benchmark, select_designs
    from bnnflow.commands.sweep import Progress, check_failures, print_job_script, spec_from_args
    from bnnflow.outputs import check_reports

    if args.job_script:
        return print_job_script(args)
    check_reports(args.build, "benchmark", plot=args.out is None)
    spec = spec_from_args(args)
    console = Console()
    designs = select_designs(args.only)
    console.print(f"Benchmarking {len(designs)} designs on {spec.describe()}; builds cached in {args.build}.")
    with Progress(console, len(designs), "designs") as progress:
        report = run_benchmark(args.board, args.build, only=args.only, force=args.force, on_done=progress.row,
                               on_counts=progress.counts, lut_max=args.lut_max, bram_max=args.bram_max, spec=spec)
    print_report(report, console)
    png = plot(report, args.out or Path(args.build) / "benchmark.png")
    print()
    print(markdown_table(report))
    print()
    console.print(f"Plot: {png}; table: {Path(args.build) / 'benchmark.md'}; data: "
                  f"{Path(args.build) / 'benchmark.json'}.")
    console.print(f"Wall time: {report['wall_seconds']:.0f} s ({report['wall_seconds'] / 60:.1f} min) on "
                  f"{report['cluster']}.")
    check_failures(report["rows"])
    return 0


COMMANDS = {"benchmark": cmd_benchmark}
