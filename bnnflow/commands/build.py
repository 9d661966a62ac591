"""`bnnflow export`, `bnnflow build` and `bnnflow estimate`."""

from __future__ import annotations

from pathlib import Path

from bnnflow.cli_args import add_model_args, build_args, hidden_alias, request_from_args
from bnnflow.errors import BnnflowError, DoesNotFit


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="export a model to QONNX")
    add_model_args(p, board=False)
    p.add_argument("--out", "-o", type=Path, help="QONNX file to write (required)")
    hidden_alias(p, "--output", "out", type=Path)

    p = sub.add_parser("build", help="run the FINN flow as far as the installed tools allow",
                       description="Export, streamline, convert to FINN HW layers, fold, estimate and generate "
                                   "HLS/RTL code; with Vitis HLS / Vivado installed, continue to IP, stitched IP, "
                                   "rtlsim, bitstream, driver and deployment package.")
    build_args(p)
    p.add_argument("--stop-after", metavar="STEP", help="last step to run (see 'bnnflow steps')")

    p = sub.add_parser("estimate", help="build up to the resource and throughput estimates and print them",
                       description="Build up to FINN's estimate reports and print resources and FPS against the "
                                   "board's budget; exits with 4 when the design does not fit.")
    build_args(p)


def cmd_export(args) -> int:
    from rich.console import Console

    from bnnflow.build_flows.network import prepare_network
    from bnnflow.models.export import export_model

    console = Console()
    if args.out is None:
        raise BnnflowError("Name the QONNX file to write with --out FILE.")
    if args.out.exists():
        raise BnnflowError(f"{args.out} already exists: choose another --out or delete it first.")
    from bnnflow.model_ref import is_onnx_model, shown

    if is_onnx_model(args.model):
        raise BnnflowError(f"{shown(args.model)} is a QONNX file already: 'bnnflow build {shown(args.model)}' takes "
                           "it as it is.")
    net, _ = prepare_network(request_from_args(args), console)
    export_model(net, args.out)
    console.print(f"Wrote {args.out}")
    return 0


def finish(result, console) -> int:
    """Print a build's result; the exit code says whether a tool was missing."""
    from bnnflow.build_flows.build import show_result

    show_result(result, console)
    if result["summary"] and not result["summary"]["fits"]:
        console.print(f"[red]The design does not fit the {result['board'].name}:[/] lower --target-fps, pick a "
                      "smaller --variant, raise --lut-max / --bram-max, or edit the folding config.")
    if result.get("stopped"):
        console.print(f"[yellow]{result['stopped']}[/]")
        return result["stopped"].exit_code
    return 0


def cmd_build(args) -> int:
    from rich.console import Console

    from bnnflow.build_flows.build import run_build

    console = Console()
    return finish(run_build(request_from_args(args), console), console)


def cmd_estimate(args) -> int:
    from rich.console import Console

    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import run_build

    console = Console()
    result = run_build(request_from_args(args, stop_after=flow.ESTIMATE_STEP), console)
    code = finish(result, console)
    if result["summary"] and not result["summary"]["fits"]:
        return DoesNotFit.exit_code
    return code


COMMANDS = {"export": cmd_export, "build": cmd_build, "estimate": cmd_estimate}
