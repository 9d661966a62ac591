"""One CLI vocabulary: the argument groups every subcommand shares, and the BuildRequest they make.

The same flag means the same thing in every command:
  --build DIR     a build folder (built there when it does not hold the build yet)
  --out PATH      the command's own product (a build's folder for build/estimate, the folding
                  JSON for fold, the package for deploy, the run folder for train, ...; an existing
                  one only when it holds what the command writes: outputs.py)
  --lut-max/--bram-max  the budget, wherever fit is judged
Old spellings stay as hidden aliases for one release. Nothing heavy is imported here, so
`bnnflow --help` stays instant.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from bnnflow.catalog import MODEL_NAMES
from bnnflow.errors import BnnflowError

DEFAULT_BOARD = "pynq-z2"
DATA_HELP = "CIFAR-10 copy: .npz, cifar-10-batches-py folder, or its parent; default: $BNNFLOW_DATA or ../shared/data"


def hidden_alias(p: argparse.ArgumentParser, flag: str, dest: str, **kw) -> None:
    """An old spelling that still works for one release but is no longer shown."""
    p.add_argument(flag, dest=dest, help=argparse.SUPPRESS, **kw)


def add_model_args(p: argparse.ArgumentParser, board: bool = True) -> None:
    p.add_argument("model", help=f"network: {', '.join(MODEL_NAMES)}, or your own Brevitas network as "
                                 "path/to/file.py:factory or package.module:factory, or its QONNX export as "
                                 "path/to/model.onnx (see README, 'Your own network')")
    add_user_input_args(p)
    p.add_argument("--variant", default="default", help="width/depth variant (see 'bnnflow models'); "
                                                         "default: %(default)s")
    p.add_argument("--checkpoint", type=Path, help="trained .pt from 'bnnflow train'; default: the committed "
                                                     "models/checkpoints/MODEL-VARIANT.pt where one exists, else "
                                                     "random weights with batch-norm statistics calibrated on CIFAR-10")
    p.add_argument("--random-weights", action="store_true",
                   help="ignore the committed checkpoint and build calibrated random weights")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights; default: %(default)s")
    if board:
        add_board_arg(p)


def add_user_input_args(p: argparse.ArgumentParser) -> None:
    """How a user's own network is built and fed: --model-args and the pixel scaling (build and train alike)."""
    p.add_argument("--model-args", metavar="JSON", help="your own network only: keyword arguments for its factory, "
                                                        "a JSON object such as '{\"pretrained\": false}'")
    p.add_argument("--input-scale", choices=("raw", "unit"), default=None,
                   help="your own network only: the pixels it was trained on, raw (0..255) or unit (0..1; bnnflow "
                        "folds the 1/255 into the graph, the hardware still takes raw bytes); default: raw")
    p.add_argument("--input-mean", metavar="M1,M2,M3", help="your own network only: per-channel mean it subtracts "
                                                           "from the pixels (in --input-scale units, as "
                                                           "torchvision's Normalize); needs --input-std")
    p.add_argument("--input-std", metavar="S1,S2,S3", help="your own network only: per-channel standard deviation "
                                                          "it divides by; bnnflow folds (x - mean) / std into the "
                                                          "graph in front of your network")


def add_board_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--board", default=DEFAULT_BOARD, help="target board (see 'bnnflow boards'); default: %(default)s")


def add_build_dir_arg(p: argparse.ArgumentParser, help_text: str | None = None, out_alias: bool = False) -> None:
    p.add_argument("--build", type=Path, metavar="DIR",
                   help=help_text or "build folder, reused when it holds this build and built there otherwise; "
                                     "default: build/MODEL-VARIANT-BOARD")
    if out_alias:  # build, estimate and verify called the build folder --out before
        hidden_alias(p, "--out", "build", type=Path)


def add_budget_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lut-max", type=float, help="share of the device's LUTs the design may use; default: the "
                                                 "board's (0.85 on the PYNQ-Z2)")
    p.add_argument("--bram-max", type=float, help="share of the device's BRAM the design may use; default: the "
                                                  "board's (0.95 on the PYNQ-Z2)")


def add_flow_args(p: argparse.ArgumentParser, restart: bool = True) -> None:
    """Where a build starts (restart: --resume / --from-step), and its folding."""
    if restart:
        p.add_argument("--resume", action="store_true", help="continue an existing build after its last "
                                                             "finished step")
        p.add_argument("--from-step", metavar="STEP", help="re-run an existing build from this step "
                                                           "(see 'bnnflow steps')")
    p.add_argument("--force", action="store_true", help="replace an existing build folder")
    p.add_argument("--target-fps", type=int, help="let FINN pick the folding for this frame rate "
                                                   "(used when the board has no folding config for the model)")
    p.add_argument("--folding", type=Path, help="folding config JSON to apply instead of "
                                                "hw/folding/BOARD/MODEL-VARIANT.json, or 'auto' for bnnflow's "
                                                "folding search (see 'bnnflow fold')")


DOWNLOAD_HELP = "download the official CIFAR-10 archive into --data (or the default folder) if no copy is there"


def add_data_args(p: argparse.ArgumentParser, help_text: str = DATA_HELP) -> None:
    """--data and --download: every command that reads CIFAR-10 takes both (data.py's errors name --download)."""
    p.add_argument("--data", type=Path, help=help_text)
    p.add_argument("--download", action="store_true", help=DOWNLOAD_HELP)


def build_args(p: argparse.ArgumentParser, out_alias: bool = True, restart: bool = True) -> None:
    """Everything a command that builds takes; out_alias: accept the old --out for --build."""
    add_model_args(p)
    add_build_dir_arg(p, out_alias=out_alias)
    add_flow_args(p, restart)
    add_budget_args(p)


def weights_named(args) -> bool:
    """Did the user name the weights (--checkpoint, --random-weights), rather than take the default?"""
    explicit = getattr(args, "checkpoint", None) is not None and not getattr(args, "checkpoint_defaulted", False)
    return explicit or getattr(args, "random_weights", False)


def user_model_args(args) -> dict | None:
    """--model-args as a dict (one sentence when it is not a JSON object); only a user's network takes it."""
    from bnnflow.model_ref import is_user_model, parse_model_args

    text = getattr(args, "model_args", None)
    if text is not None and not is_user_model(args.model):
        raise BnnflowError("--model-args is for your own network (FILE.py:factory or package.module:factory): "
                           "bnnflow's own models take --variant.")
    return parse_model_args(text) if text is not None else None


def model_words(args) -> str:
    """The network as a command line names it: 'cnv --variant tiny', or a reference with its flags."""
    return network_words(args.model, args.variant, model_args=getattr(args, "model_args", None),
                         input_scale=getattr(args, "input_scale", None), input_mean=getattr(args, "input_mean", None),
                         input_std=getattr(args, "input_std", None))


def network_words(model: str, variant: str, *, model_args: str | None = None, input_scale: str | None = None,
                  input_mean: str | None = None, input_std: str | None = None) -> str:
    """'cnv --variant tiny', or a user reference followed by the flags that rebuild it, quoted for a shell."""
    from bnnflow.model_ref import is_user_model

    if not is_user_model(model):
        return f"{model} --variant {variant}"
    words = [shlex.quote(model)]
    for flag, value in (("--model-args", model_args), ("--input-scale", input_scale), ("--input-mean", input_mean),
                        ("--input-std", input_std)):
        if value:
            words.append(f"{flag} {shlex.quote(value)}")
    return " ".join(words)


def request_from_args(args, **overrides):
    """The BuildRequest of a parsed command line (the one place argparse becomes a request).

    A command given an existing folder (--build, --resume, --from-step) without --checkpoint or
    --random-weights takes the weights that folder holds.
    """
    from bnnflow.build_flows.identity import BuildRequest
    from bnnflow.model_ref import input_description

    from bnnflow.model_ref import is_onnx_model, shown

    if getattr(args, "random_weights", False) and is_onnx_model(args.model):
        raise BnnflowError(f"{shown(args.model)} holds its weights: drop --random-weights (export the network with the "
                           "weights you want to build).")
    continuing = getattr(args, "resume", False) or getattr(args, "from_step", None) is not None
    fields = dict(model=args.model, variant=args.variant, board=getattr(args, "board", DEFAULT_BOARD),
                  checkpoint=args.checkpoint,
                  out=getattr(args, "build", None), resume=getattr(args, "resume", False),
                  from_step=getattr(args, "from_step", None), stop_after=getattr(args, "stop_after", None),
                  force=getattr(args, "force", False), target_fps=getattr(args, "target_fps", None),
                  folding=getattr(args, "folding", None), seed=getattr(args, "seed", 0),
                  lut_max=getattr(args, "lut_max", None), bram_max=getattr(args, "bram_max", None),
                  model_args=user_model_args(args), input_scale=input_description(
                      getattr(args, "input_scale", None), getattr(args, "input_mean", None),
                      getattr(args, "input_std", None)),
                  any_weights=not weights_named(args) and (continuing or getattr(args, "build", None) is not None))
    fields.update(overrides)
    return BuildRequest(**fields)
