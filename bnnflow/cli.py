"""The `bnnflow` command: one entry point, a subcommand per job.

User errors end in one sentence and a non-zero exit; heavy libraries (torch, FINN) are
imported only by the subcommand that needs them so `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnnflow.errors import BnnflowError

MODELS = ("resnete", "densenet", "cnv")
DESCRIPTION = """\
bnnflow turns 1-bit CIFAR-10 networks (binary ResNetE, BinaryDenseNet and FINN's CNV-W1A1)
into FINN dataflow accelerators for the PYNQ-Z2 and proves every stage bit-exact.

Typical use:
  bnnflow models                         list models and variants
  bnnflow build resnete                  QONNX -> FINN graph -> estimates -> HLS/RTL code (-> bitstream with Vivado)
  bnnflow estimate densenet              stop after the resource / FPS estimates
  bnnflow verify cnv --images 100        Brevitas vs every FINN stage on real CIFAR-10 images
  bnnflow export resnete -o net.onnx     just the QONNX model
  bnnflow deploy cnv --variant tiny      folder + .zip for the board: bitfile, driver, notebook, test images
  bnnflow train resnete --epochs 150     train from scratch on CIFAR-10 (runs/..., --resume continues)
  bnnflow evaluate runs/X/best.pt        test top-1: Brevitas on all 10,000 images, FINN graph image for image
  bnnflow runs runs/*                    recipe table of training runs (epochs, CPU-hours, val/test top-1)
"""


def _model_args(p: argparse.ArgumentParser, board: bool = True) -> None:
    p.add_argument("model", help=f"network: {', '.join(MODELS)}")
    p.add_argument("--variant", default="default", help="width/depth variant (see 'bnnflow models'); default: %(default)s")
    p.add_argument("--checkpoint", type=Path, help="trained .pt from 'bnnflow train'; default: the committed "
                                                     "models/checkpoints/MODEL-VARIANT.pt where one exists, else "
                                                     "random weights with batch-norm statistics calibrated on CIFAR-10")
    p.add_argument("--random-weights", action="store_true",
                   help="ignore the committed checkpoint and build calibrated random weights")
    if board:
        p.add_argument("--board", default="pynq-z2", help="target board (see 'bnnflow boards'); default: %(default)s")


def _build_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--out", type=Path, help="build folder; default: build/MODEL-VARIANT-BOARD")
    p.add_argument("--resume", action="store_true", help="continue an existing build after its last finished step")
    p.add_argument("--from-step", help="re-run an existing build from this step (see 'bnnflow steps')")
    p.add_argument("--force", action="store_true", help="replace an existing build folder")
    p.add_argument("--target-fps", type=int, help="let FINN pick the folding for this frame rate "
                                                   "(used when the board has no folding config for the model)")
    p.add_argument("--folding", type=Path, help="folding config JSON to apply instead of hw/folding/BOARD/MODEL-VARIANT.json, "
                                                "or 'auto' for bnnflow's folding search (see 'bnnflow fold')")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights; default: %(default)s")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bnnflow", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("models", help="list models, variants and their binary weight counts")
    sub.add_parser("boards", help="list target boards and their resources")
    sub.add_parser("steps", help="list the build steps and the vendor tool each needs")

    p = sub.add_parser("export", help="export a model to QONNX")
    _model_args(p, board=False)
    p.add_argument("-o", "--output", type=Path, required=True, help="QONNX file to write")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("build", help="run the FINN flow as far as the installed tools allow",
                       description="Export, streamline, convert to FINN HW layers, fold, estimate and generate "
                                   "HLS/RTL code; with Vitis HLS / Vivado installed, continue to IP, stitched IP, "
                                   "rtlsim, bitstream, driver and deployment package.")
    _build_args(p)
    p.add_argument("--stop-after", help="last step to run (see 'bnnflow steps')")

    p = sub.add_parser("estimate", help="build up to the resource and throughput estimates and print them")
    _build_args(p)

    p = sub.add_parser("verify", help="prove every FINN stage computes what the Brevitas model computes",
                       description="Runs N real CIFAR-10 test images through Brevitas, the QONNX model, the "
                                   "streamlined graph, the HW-layer graph and the specialised, folded graph, and "
                                   "counts identical integer logits and identical top-1 per stage.")
    _build_args(p)
    p.add_argument("--images", type=int, default=100, help="number of CIFAR-10 test images; default: %(default)s")
    p.add_argument("--data", type=Path, help="CIFAR-10 copy: .npz, cifar-10-batches-py folder, or its parent")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 into --data if it is missing")
    p.add_argument("--build", type=Path, help="verify this existing build folder instead of building")

    from bnnflow.build_flows.deploy import add_deploy_parser  # imports nothing heavy

    add_deploy_parser(sub)
    _light("train").add_train_parser(sub)
    _light("evaluate").add_evaluate_parser(sub)
    _light("runs_table").add_runs_parser(sub)

    p = sub.add_parser("fold", help="search the fastest folding that fits the board; write it as a folding config",
                       description="Builds the model up to specialize_layers (reusing an up-to-date build folder), "
                                   "chooses PE/SIMD and memory styles for every layer to maximise the estimated "
                                   "FPS within the LUT/BRAM limits (FIFOs and width converters counted), sizes "
                                   "the FIFOs of residual/dense joins, prints the result and writes FINN's "
                                   "folding-config JSON for 'bnnflow build --folding FILE'.")
    _model_args(p)
    p.add_argument("--lut-max", type=float, default=0.85, help="share of the device's LUTs the design may use; "
                                                               "default: %(default)s")
    p.add_argument("--bram-max", type=float, default=0.95, help="share of the device's BRAM the design may use; "
                                                                "default: %(default)s")
    p.add_argument("--out", type=Path, help="folding config to write; default: BUILD/auto_folding.json")
    p.add_argument("--build", type=Path, help="build folder; default: build/MODEL-VARIANT-BOARD")
    p.add_argument("--force", action="store_true", help="rebuild the build folder even if it is up to date")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights; default: %(default)s")
    p.add_argument("--compare", action="store_true", help="also run FINN's target_fps heuristic (SetFolding) "
                                                          "and compare")

    p = sub.add_parser("benchmark", help="accuracy vs estimated FPS of every model at three widths (table + plot)",
                       description="Builds ResNetE, BinaryDenseNet and CNV-W1A1 at three widths each to the "
                                   "estimates with the searched folding (2 processes, builds cached in --dir), "
                                   "then prints and plots accuracy against estimated FPS on the board.")
    p.add_argument("--board", default="pynq-z2", help="target board; default: %(default)s")
    p.add_argument("--dir", type=Path, default=Path("build/benchmark"), help="cache of build folders; "
                                                                               "default: %(default)s")
    p.add_argument("--jobs", type=int, default=2, help="parallel builds; default: %(default)s")
    p.add_argument("--only", nargs="*", metavar="MODEL[/VARIANT]", help="restrict to these models/variants")
    p.add_argument("--force", action="store_true", help="rebuild even up-to-date builds")
    p.add_argument("--plot", type=Path, help="PNG to write; default: DIR/benchmark.png")
    return ap


def _light(name: str):
    """models/<name>.py loaded for its argparse definitions only: importing it through the
    bnnflow.models package would import torch (seconds), and --help must stay instant."""
    import importlib.util

    spec = importlib.util.find_spec("bnnflow.models")  # finds the package without running its __init__
    path = Path(spec.submodule_search_locations[0]) / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"bnnflow._cli_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses look their module up there
    module_spec.loader.exec_module(module)
    return module


def cmd_models(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from bnnflow.models.zoo import MODEL_TITLES, MODELS, build_model, weight_summary

    table = Table(title="Models (width/depth variants)")
    for col in ("model", "variant", "parameters", "binary weights", "Mbit (all weights)", "note"):
        table.add_column(col)
    for name, variants in MODELS.items():
        for vname, v in variants.items():
            w = weight_summary(build_model(name, vname))
            params = ", ".join(f"{k}={v}" for k, v in v.params.items()) or "FINN's topology"
            table.add_row(f"{name} ({MODEL_TITLES[name]})", vname, params, f"{w['binary_weights']:,}",
                          f"{w['total_mbit']:.2f}", v.note)
    Console().print(table)
    return 0


def cmd_boards(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from bnnflow.hw.boards import BOARDS

    table = Table(title="Boards")
    for col in ("board", "part", "clock", "LUT", "BRAM36", "DSP", "shell share"):
        table.add_column(col, no_wrap=col == "part")
    for b in BOARDS.values():
        table.add_row(b.name, b.part, f"{b.clock_mhz:.0f} MHz", f"{b.lut:,}", str(b.bram36), str(b.dsp),
                      f"{b.shell_reserve:.0%}")
    Console().print(table)
    return 0


def cmd_steps(args) -> int:
    from bnnflow.build_flows import flow

    for i, step in enumerate(flow.STEPS, 1):
        print(f"{i:2d}. {step.name:<28} {step.title:<34} {'needs ' + step.tool if step.tool else 'runs anywhere'}")
    return 0


def cmd_export(args) -> int:
    from bnnflow.build_flows.build import BuildRequest, prepare_network
    from bnnflow.models.export import export_model
    from rich.console import Console

    console = Console()
    net, _ = prepare_network(BuildRequest(args.model, args.variant, checkpoint=args.checkpoint, seed=args.seed), console)
    if args.output.exists():
        raise BnnflowError(f"{args.output} already exists: choose another --output or delete it first.")
    export_model(net, args.output)
    console.print(f"Wrote {args.output}")
    return 0


def _request(args, stop_after=None):
    from bnnflow.build_flows.build import BuildRequest

    return BuildRequest(model=args.model, variant=args.variant, board=args.board, checkpoint=args.checkpoint,
                        out=args.out, resume=args.resume, from_step=args.from_step,
                        stop_after=stop_after or getattr(args, "stop_after", None), force=args.force,
                        target_fps=args.target_fps, folding=args.folding, seed=args.seed)


def _finish(result, console) -> int:
    from bnnflow.build_flows.build import show_result

    show_result(result, console)
    if result["summary"] and not result["summary"]["fits"]:
        console.print(f"[red]The design does not fit the {result['board'].name}:[/] lower --target-fps, pick a "
                      "smaller --variant, or edit the folding config.")
    if result.get("stopped"):
        console.print(f"[yellow]{result['stopped']}[/]")
        return result["stopped"].exit_code
    return 0


def cmd_build(args) -> int:
    from bnnflow.build_flows.build import run_build
    from rich.console import Console

    console = Console()
    return _finish(run_build(_request(args), console), console)


def cmd_estimate(args) -> int:
    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import run_build
    from rich.console import Console

    console = Console()
    result = run_build(_request(args, stop_after=flow.ESTIMATE_STEP), console)
    code = _finish(result, console)
    if result["summary"] and not result["summary"]["fits"]:
        return 4
    return code


def cmd_verify(args) -> int:
    from bnnflow.build_flows.verify import run_verify
    from rich.console import Console

    console = Console()
    return run_verify(args, console)


def cmd_deploy(args) -> int:
    from bnnflow.build_flows.deploy import cmd_deploy as deploy

    return deploy(args)


def cmd_train(args) -> int:
    from bnnflow.models.train import cmd_train as train

    return train(args)


def cmd_evaluate(args) -> int:
    from bnnflow.models.evaluate import cmd_evaluate as evaluate

    return evaluate(args)


def cmd_runs(args) -> int:
    from bnnflow.models.runs_table import cmd_runs as runs

    return runs(args)


def cmd_fold(args) -> int:
    from bnnflow.build_flows.folding import cmd_fold as fold

    return fold(args)


def cmd_benchmark(args) -> int:
    from bnnflow.build_flows.benchmark import cmd_benchmark as benchmark

    return benchmark(args)


COMMANDS = {"fold": cmd_fold, "benchmark": cmd_benchmark, "models": cmd_models, "boards": cmd_boards, "steps": cmd_steps, "export": cmd_export,
            "build": cmd_build, "estimate": cmd_estimate, "verify": cmd_verify, "deploy": cmd_deploy,
            "train": cmd_train, "evaluate": cmd_evaluate, "runs": cmd_runs}


def _default_checkpoint(args) -> None:
    """No --checkpoint: take the committed trained weights of this model/variant, if any."""
    if getattr(args, "checkpoint", False) is not None or not hasattr(args, "variant"):
        return
    if getattr(args, "random_weights", False) or getattr(args, "resume", False) or getattr(args, "from_step", None):
        return
    if args.command == "verify" and args.build is not None:
        return  # verifies the weights that build holds
    from bnnflow.models.checkpoint import committed_checkpoint, recorded_top1

    path = committed_checkpoint(args.model, args.variant)
    if path is not None:
        acc = recorded_top1(path)
        acc_text = f", CIFAR-10 test top-1 {100 * acc:.1f} %" if acc is not None else ""
        print(f"Using the committed checkpoint {path.relative_to(path.parents[2])}{acc_text} "
              "(--random-weights for random weights).")  # stdout: stderr carries only the one-sentence errors
        args.checkpoint = path


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if not args.command:
        ap.print_help()
        return 1
    try:
        _default_checkpoint(args)
        return COMMANDS[args.command](args)
    except BnnflowError as exc:
        print(f"bnnflow: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bnnflow: interrupted; finished steps are kept and --resume continues.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
