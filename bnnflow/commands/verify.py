"""`bnnflow verify`: Brevitas vs every FINN stage on real CIFAR-10 images."""

from __future__ import annotations

from bnnflow.cli_args import add_data_args, build_args
from bnnflow.errors import BnnflowError


def add_parsers(sub) -> None:
    p = sub.add_parser("verify", help="prove every FINN stage computes what the Brevitas model computes",
                       description="Runs N real CIFAR-10 test images through Brevitas, the QONNX model, the "
                                   "streamlined graph, the HW-layer graph and the specialised, folded graph, and "
                                   "counts identical integer logits and identical top-1 per stage. Reuses the "
                                   "build folder when it holds this build (given --build without --checkpoint, "
                                   "whatever weights it holds), and builds there otherwise.")
    build_args(p)
    p.add_argument("--images", type=int, default=100, help="number of CIFAR-10 test images; default: %(default)s")
    p.add_argument("--sim", type=int, default=0, metavar="N",
                   help="also run the first N images through FINN's cppsim: the generated HLS C++ of every HLS "
                        "layer, compiled with g++ against the open-source ap_int headers and finn-hlslib "
                        "(BNNFLOW_HLS_DEPS or ../shared/vendor, or a Vitis HLS install), and every RTL layer in Verilator, "
                        "one node at a time. Binaries are cached in BUILD/cppsim and BUILD/verilator. "
                        "Default: %(default)s (off)")
    add_data_args(p, download=True)


def cmd_verify(args) -> int:
    from rich.console import Console

    from bnnflow.atomic import write_json
    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import BREVITAS_FILE, ensure_build, run_build
    from bnnflow.build_flows.verify import print_verify, verify_build
    from bnnflow.cli_args import request_from_args
    from bnnflow.models.checkpoint import load_checkpoint
    from bnnflow.models.data import load_cifar10

    console = Console()
    if args.images < 1:
        raise BnnflowError("--images must be at least 1.")
    if args.sim < 0:
        raise BnnflowError("--sim must be 0 (off) or a number of images.")
    if args.sim > args.images:
        raise BnnflowError(f"--sim {args.sim} is more than the {args.images} images verified (--images).")
    x, y = load_cifar10(args.data, "test", download=args.download)
    if args.images > len(x):
        raise BnnflowError(f"--images {args.images} is more than the {len(x)} test images available.")
    req = request_from_args(args, stop_after=flow.FOLDED_STEP)
    if req.from_step:
        out = run_build(req, console)["out"]
    else:
        out, reused, _ = ensure_build(req, flow.FOLDED_STEP, console)
        if reused:
            console.print(f"Verifying the build in {out}.")
    net, _ = load_checkpoint(out / BREVITAS_FILE)
    result = verify_build(out, net, x[:args.images], y, console, sim=args.sim)
    write_json(out / "verify.json", result)
    print_verify(result, console)
    console.print(f"Report: {out / 'verify.json'}")
    return 0 if result["all_identical"] else 1


COMMANDS = {"verify": cmd_verify}
