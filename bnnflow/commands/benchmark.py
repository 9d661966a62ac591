"""`bnnflow benchmark`: accuracy vs estimated FPS of every model at three widths (table + plot)."""

from __future__ import annotations

from pathlib import Path

from bnnflow.cli_args import add_board_arg, add_budget_args, hidden_alias

DEFAULT_DIR = Path("build/benchmark")


def add_parsers(sub) -> None:
    p = sub.add_parser("benchmark", help="accuracy vs estimated FPS of every model at three widths (table + plot)",
                       description="Builds ResNetE, BinaryDenseNet and CNV-W1A1 at three widths each to the "
                                   "estimates with the searched folding (2 processes, build folders cached under "
                                   "--build), then prints and plots accuracy against estimated FPS on the board.")
    add_board_arg(p)
    add_budget_args(p)
    p.add_argument("--build", type=Path, metavar="DIR", default=DEFAULT_DIR,
                   help="folder of the designs' build folders (a cache); default: %(default)s")
    hidden_alias(p, "--dir", "build", type=Path)
    p.add_argument("--out", type=Path, help="plot (PNG) to write; default: BUILD/benchmark.png")
    hidden_alias(p, "--plot", "out", type=Path)
    p.add_argument("--jobs", type=int, default=2, help="parallel builds; default: %(default)s")
    p.add_argument("--only", nargs="*", metavar="MODEL[/VARIANT]", help="restrict to these models/variants")
    p.add_argument("--force", action="store_true", help="rebuild even up-to-date builds")


def print_report(report: dict, console) -> None:
    from rich.table import Table

    from bnnflow.build_flows.benchmark import sim_fps_text, accuracy_text

    table = Table(title=f"bnnflow benchmark on {report['board']} ({report['clock_mhz']:.0f} MHz)")
    for col in ("model", "variant", "top-1", "est. FPS", "sim. FPS", "lat. ms", "LUT%", "BRAM%", "MMAC/img", "bound%", "s"):
        table.add_column(col, justify="left" if col in ("model", "variant") else "right")
    for r in report["rows"]:
        if r.get("error"):
            table.add_row(r["title"], r["variant"], accuracy_text(r), "[red]does not fit[/]", "", "", "", "", "", "",
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
    import time

    from rich.console import Console

    from bnnflow.build_flows.benchmark import select_designs, markdown_table, plot, run_benchmark

    console = Console()
    t0 = time.time()

    def done(row: dict) -> None:
        what = "cached" if row.get("cached") else ("does not fit" if row.get("error") else f"{row['fps']:,.0f} FPS")
        console.print(f"  {row['title']}/{row['variant']}: {what} ({row['seconds']:.0f} s, "
                      f"{time.time() - t0:.0f} s elapsed)")

    console.print(f"Benchmarking {len(select_designs(args.only))} designs with {args.jobs} processes; builds cached in "
                  f"{args.build}.")
    report = run_benchmark(args.board, args.build, args.jobs, args.only, args.force, console, on_done=done,
                           lut_max=args.lut_max, bram_max=args.bram_max)
    print_report(report, console)
    png = plot(report, args.out or Path(args.build) / "benchmark.png")
    print()
    print(markdown_table(report))
    print()
    console.print(f"Plot: {png}; table: {Path(args.build) / 'benchmark.md'}; data: "
                  f"{Path(args.build) / 'benchmark.json'}.")
    console.print(f"Wall time: {report['wall_seconds']:.0f} s ({report['wall_seconds'] / 60:.1f} min) with "
                  f"{args.jobs} processes.")
    return 0


COMMANDS = {"benchmark": cmd_benchmark}
