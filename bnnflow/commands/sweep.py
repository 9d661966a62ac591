"""`bnnflow sweep FILE`: a grid or list of design points, one Dask task each; table + plot of what finished.

The flags that say where tasks run (--jobs, --scheduler, --cluster ...) are defined here and shared
with `bnnflow benchmark`, which is a sweep of its nine designs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bnnflow.errors import BnnflowError
from bnnflow.outputs import OutCheck

DEFAULT_DIR = Path("build/sweep")


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the design points run (default: a local Dask cluster sized to this machine)")
    g.add_argument("--jobs", type=int, help="local worker processes (1: one point after another in this process; "
                                            "default: one per core, as memory allows), or with --cluster the "
                                            "number of batch jobs (default 1)")
    g.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://HOST:8786; workers "
                                                          "that do not see --build return archives")
    g.add_argument("--cluster", choices=("slurm", "lsf", "pbs"), help="start Dask workers as batch jobs "
                                                                       "(dask-jobqueue)")
    g.add_argument("--cores", type=int, default=4, help="cores per batch job; default: %(default)s")
    g.add_argument("--processes", type=int, help="worker processes (points at once) per batch job; default: --cores")
    g.add_argument("--memory", default="16GB", help="memory per batch job; default: %(default)s")
    g.add_argument("--walltime", default="02:00:00", help="wall time per batch job (LSF: HH:MM); "
                                                          "default: %(default)s")
    g.add_argument("--queue", help="batch queue / partition")
    g.add_argument("--account", help="batch account to charge (LSF: project)")
    g.add_argument("--job-script", action="store_true", help="print the batch script one job would run, then stop")
    g.add_argument("--retries", type=int, default=1, help="re-runs of a point whose task raised an unexpected "
                                                          "error; default: %(default)s (a lost worker's points "
                                                          "are re-run by Dask)")


def spec_from_args(args):
    from bnnflow.build_flows.sweep_cluster import ClusterSpec

    return ClusterSpec(jobs=args.jobs, scheduler=args.scheduler, cluster=args.cluster, cores=args.cores,
                       processes=args.processes, memory=args.memory, walltime=args.walltime, queue=args.queue,
                       account=args.account).check()


def print_job_script(args) -> int:
    from bnnflow.build_flows.sweep_cluster import job_script

    if not args.cluster:
        raise BnnflowError("--job-script shows the script of a batch job: pass --cluster slurm, lsf or pbs.")
    print(job_script(spec_from_args(args)))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("sweep", help="build a grid of design points on a Dask cluster: table + plot",
                       description="Builds every design point a YAML or JSON file names (grid: keys with lists of "
                                   "values, every combination; points: single designs) as one task each on a Dask "
                                   "cluster, caches each build folder under --build by a hash of its identity (a "
                                   "re-run skips finished points) and tabulates and plots what finished. Keys: "
                                   "model, variant, board, folding (committed, auto, fps:N or FILE.json), "
                                   "stop_after (a step, see 'bnnflow steps'), weights (committed, random or "
                                   "FILE.pt), seed, lut_max, bram_max. A file with a 'train' section (its own "
                                   "grid and/or points of 'bnnflow train' options: model, variant, epochs, "
                                   "batch_size, lr, optimizer, seed ...) trains each point into its own run "
                                   "folder instead and tabulates their accuracies.")
    p.add_argument("file", type=Path, help="the sweep file (.yaml, .yml or .json)")
    p.add_argument("--build", type=Path, metavar="DIR", default=DEFAULT_DIR,
                   help="folder of the points' build (or run) folders; workers that cannot see it send theirs back "
                        "as archives; default: %(default)s")
    p.add_argument("--out", type=Path, help="plot (PNG) to write; default: BUILD/sweep.png")
    p.set_defaults(check_outputs=OutCheck("plot"))
    p.add_argument("--force", action="store_true", help="rebuild finished points too")
    p.add_argument("--dry-run", action="store_true", help="list the points and which are cached; build nothing")
    p.add_argument("--no-shared-dir", action="store_true",
                   help="workers do not see --build: each returns its point's folder as an archive, unpacked here "
                        "(default: found out per worker with a probe file)")
    add_cluster_args(p)


class Progress:
    """Points done / running / failed: a rich progress bar on a terminal, else (a batch job's log) a line
    whenever the counts change; and each point's line as it ends."""

    def __init__(self, console, total: int, what: str):
        from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn

        self.console, self.what = console, what
        self.bar = Bar(TextColumn(what), BarColumn(bar_width=20), TextColumn("{task.fields[counts]}"),
                       TimeElapsedColumn(), console=console) if console.is_terminal else None
        self.task = self.bar.add_task(what, total=total, counts="") if self.bar else None

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def counts(self, c: dict) -> None:
        text = (f"{c['done']} done ({c['cached']} cached), {c['running']} running, {c['failed']} failed, "
                f"{c['queued']} queued")
        if self.bar:
            self.bar.update(self.task, completed=c["done"] + c["failed"], counts=text)
        else:
            self.console.print(f"{self.what}: {text}", soft_wrap=True)  # a log line stays one line

    def row(self, r: dict) -> None:
        status = r.get("status")
        if r.get("cached"):
            what = "cached"
        elif status == "done" and r.get("fps") is not None:
            what = f"{r['fps']:,.0f} FPS"
        else:
            what = f"[yellow]{status}[/]: {r.get('error') or 'no estimates (stopped before them)'}"
        self.console.print(f"  {r['title']}/{r['variant']} on {r.get('board', '')}: {what} ({r['seconds']:.0f} s)",
                           soft_wrap=True)


def check_failures(rows: list[dict]) -> None:
    """Failed or lost points end the command with one sentence (the table above says which and why)."""
    bad = [r for r in rows if r.get("status") in ("failed", "lost")]
    if bad:
        names = ", ".join(f"{r['model']}/{r['variant']}" for r in bad[:4]) + (" ..." if len(bad) > 4 else "")
        raise BnnflowError(f"{len(bad)} of {len(rows)} design points failed or were lost ({names}): the table says "
                           "why, and the same command re-runs just them (finished points are cached).")


def cmd_sweep(args) -> int:
    from rich.console import Console

    from bnnflow.build_flows.benchmark import has_figures, markdown_table, plot, write_report
    from bnnflow.build_flows.sweep import folder_name, point_key, run_sweep
    from bnnflow.build_flows.sweep_spec import load_sweep
    from bnnflow.hw.boards import get_board
    from bnnflow.outputs import check_reports

    if args.job_script:
        return print_job_script(args)
    spec = spec_from_args(args)
    points = load_sweep(args.file)
    console = Console()
    from bnnflow.build_flows.sweep_train_spec import TrainPoint

    if isinstance(points[0], TrainPoint):  # training needs no FINN: not imported (~10 s)
        return _train_sweep(args, points, spec, console)
    from bnnflow.build_flows import flow

    points = load_sweep(args.file, tuple(flow.STEP_NAMES))
    if args.dry_run:
        return _dry_run(console, points, args.build, point_key, folder_name, "to build")
    check_reports(args.build, "sweep", plot=args.out is None)
    result = _run_points(args, spec, console, points, run_sweep, "Sweeping {n} design points", "build", "points",
                         lambda progress: progress.row)
    boards = list(dict.fromkeys(p.board for p in points))
    board = get_board(boards[0])
    report = {"board": ", ".join(boards), "part": board.part, "clock_mhz": board.clock_mhz,
              "heading": f"Sweep {args.file.name}: {len(points)} design points on {', '.join(boards)}; FINN's "
                         "estimates with the FIFOs and width converters FINN will insert.",
              "wall_seconds": result["wall_seconds"], "cluster": spec.describe(), "rows": result["rows"]}
    write_report(report, args.build, "sweep")
    print()
    print(markdown_table(report))
    print()
    png = plot(report, args.out or args.build / "sweep.png") if any(map(has_figures, result["rows"])) else "none"
    console.print(f"Plot: {png}; table: {args.build / 'sweep.md'}; data: {args.build / 'sweep.json'}; wall time "
                  f"{result['wall_seconds']:.0f} s.")
    check_failures(result["rows"])
    return 0


def _run_points(args, spec, console, points, runner, doing: str, folders: str, unit: str, on_row_of):
    """Announce the sweep, then run its points with a progress bar (design and training sweeps alike)."""
    console.print(f"{doing.format(n=len(points))} from {args.file} on {spec.describe()}; {folders} folders in "
                  f"{args.build}.")
    with Progress(console, len(points), unit) as progress:
        return runner(points, args.build, spec, force=args.force, retries=args.retries, on_row=on_row_of(progress),
                      on_counts=progress.counts, shared=False if args.no_shared_dir else None)


def _dry_run(console, points, build: Path, key_of, folder_of, todo: str) -> int:
    """--dry-run: each point, cached or still to do, and its folder."""
    from bnnflow.build_flows.sweep import cached_row

    for p in points:
        key = key_of(p)
        state = "cached" if cached_row(build.resolve() / folder_of(p, key), key) else todo
        console.print(f"  {p.label}: {state} ({folder_of(p, key)})", soft_wrap=True)
    return 0


def _train_sweep(args, points, spec, console) -> int:
    """A sweep file's training points: one `bnnflow train` each; the results table of what finished."""
    from bnnflow.atomic import write_json, write_text
    from bnnflow.build_flows.sweep_train import BAD, run_train_sweep, train_folder_name, train_key, train_table
    from bnnflow.outputs import check_reports

    if args.dry_run:
        return _dry_run(console, points, args.build, train_key, train_folder_name, "to train")
    check_reports(args.build, "train_sweep", plot=False)
    result = _run_points(args, spec, console, points, run_train_sweep, "Training {n} points", "run", "runs",
                         lambda progress: lambda r: _train_line(console, r))
    table = train_table(result["rows"])
    args.build.mkdir(parents=True, exist_ok=True)
    write_text(args.build / "train_sweep.md", f"Training sweep {args.file.name} on {spec.describe()}, wall time "
                                              f"{result['wall_seconds']:.0f} s.\n\n{table}\n")
    write_json(args.build / "train_sweep.json", {"cluster": spec.describe(), "wall_seconds": result["wall_seconds"],
                                                 "rows": result["rows"]})
    print()
    print(table)
    print()
    console.print(f"Table: {args.build / 'train_sweep.md'}; data: {args.build / 'train_sweep.json'}; wall time "
                  f"{result['wall_seconds']:.0f} s.")
    bad = [r for r in result["rows"] if r.get("status") in BAD]
    if bad:
        names = ", ".join(r["label"] for r in bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise BnnflowError(f"{len(bad)} of {len(result['rows'])} training points did not finish ({names}): the "
                           "table says why, and the same command re-runs just them (finished runs are cached).")
    return 0


def _train_line(console, r: dict) -> None:
    from rich.markup import escape

    if r.get("status") == "done":
        what = "cached" if r.get("cached") else f"test top-1 {100 * (r.get('test_top1') or 0):.1f}%"
    else:
        what = f"[yellow]{r.get('status')}[/]: {escape(str(r.get('error')))}"
    console.print(f"  {escape(r['label'])}: {what} ({r['seconds']:.0f} s)", soft_wrap=True, markup=True)


COMMANDS = {"sweep": cmd_sweep}
