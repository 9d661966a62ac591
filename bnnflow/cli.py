"""The `bnnflow` command: one entry point, a subcommand per job.

User errors end in one sentence and a non-zero exit; heavy libraries (torch, FINN) are
imported only by the subcommand that needs them so `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnnflow.commands import benchmark, build, deploy, evaluate, fold, recalibrate, sweep, train, verify
from bnnflow.errors import BnnflowError

DESCRIPTION = """\
bnnflow turns 1-bit CIFAR-10 networks (binary ResNetE, BinaryDenseNet and FINN's CNV-W1A1)
into FINN dataflow accelerators for the PYNQ-Z2 and proves every stage bit-exact.

Typical use:
  bnnflow models                         list models and variants
  bnnflow build resnete                  QONNX -> FINN graph -> estimates -> HLS/RTL code (-> bitstream with Vivado)
  bnnflow estimate densenet              stop after the resource / FPS estimates
  bnnflow verify cnv --images 100        Brevitas vs every FINN stage on real CIFAR-10 images
  bnnflow export resnete --out net.onnx  just the QONNX model
  bnnflow deploy cnv --variant tiny      folder + .zip for the board: bitfile, driver, notebook, test images
  bnnflow train resnete --epochs 150     train from scratch on CIFAR-10 (runs/..., --resume continues)
  bnnflow evaluate runs/X/best.pt        test top-1: Brevitas on all 10,000 images, FINN graph image for image
  bnnflow recalibrate X.pt --out Y.pt    precise batch-norm statistics for a trained checkpoint
  bnnflow runs runs/*                    recipe table of training runs (epochs, CPU-hours, val/test top-1)
  bnnflow sweep points.yaml              a grid of design points on a Dask cluster (local, --scheduler, --cluster slurm)
"""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bnnflow", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("models", help="list models, variants and their binary weight counts")
    sub.add_parser("boards", help="list target boards and their resources")
    sub.add_parser("steps", help="list the build steps and the vendor tool each needs")
    build.add_parsers(sub)
    verify.add_parsers(sub)
    deploy.add_parsers(sub)
    _light("train_config").add_train_parser(sub)
    evaluate.add_parsers(sub)
    recalibrate.add_parsers(sub)
    _light("runs_table").add_runs_parser(sub)
    fold.add_parsers(sub)
    benchmark.add_parsers(sub)
    sweep.add_parsers(sub)
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


def cmd_runs(args) -> int:
    from bnnflow.models.runs_table import cmd_runs as runs

    return runs(args)


COMMANDS = {"models": cmd_models, "boards": cmd_boards, "steps": cmd_steps, "runs": cmd_runs, **train.COMMANDS,
            **build.COMMANDS, **verify.COMMANDS, **deploy.COMMANDS, **evaluate.COMMANDS, **recalibrate.COMMANDS,
            **fold.COMMANDS, **benchmark.COMMANDS, **sweep.COMMANDS}


def _default_checkpoint(args) -> None:
    """No --checkpoint: take the committed trained weights of this model/variant, if any. A command
    given an existing build (--build, --resume, --from-step) takes that build's weights instead."""
    if getattr(args, "checkpoint", False) is not None or not hasattr(args, "variant"):
        return
    from bnnflow.model_ref import is_user_model

    if getattr(args, "random_weights", False) or is_user_model(args.model):  # a user's network: no committed weights
        return
    from bnnflow.models.checkpoint import committed_checkpoint, recorded_top1

    path = committed_checkpoint(args.model, args.variant)
    if path is None:
        return
    args.checkpoint, args.checkpoint_defaulted = path, True
    if getattr(args, "build", None) is None and not getattr(args, "resume", False) \
            and getattr(args, "from_step", None) is None:
        acc = recorded_top1(path)
        acc_text = f", CIFAR-10 test top-1 {100 * acc:.1f} %" if acc is not None else ""
        print(f"Using the committed checkpoint {path.relative_to(path.parents[2])}{acc_text} "
              "(--random-weights for random weights).")  # stdout: stderr carries only the one-sentence errors


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if not args.command:
        ap.print_help()
        return 1
    try:
        if getattr(args, "board", None):  # before anything is loaded or said about the weights
            from bnnflow.hw.boards import get_board

            get_board(args.board)
        if getattr(args, "check_outputs", None):  # a refused --out costs nothing and follows no other output
            args.check_outputs(args)
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
