"""`bnnflow verify`: Brevitas vs every FINN stage on real CIFAR-10 images."""

from __future__ import annotations

from bnnflow.cli_args import add_data_args, build_args
from bnnflow.errors import BnnflowError


DEFAULT_IMAGES = 100


def add_parsers(sub) -> None:
    p = sub.add_parser("verify", help="prove every FINN stage computes what the Brevitas model computes",
                       description="Runs N real CIFAR-10 test images through Brevitas, the QONNX model, the "
                                   "streamlined graph, the HW-layer graph and the specialised, folded graph, and "
                                   "counts identical integer logits and identical top-1 per stage. Reuses the "
                                   "build folder when it holds this build (given --build without --checkpoint, "
                                   "whatever weights it holds), and builds there otherwise.")
    build_args(p)
    p.add_argument("--images", type=int, default=None, help=f"number of CIFAR-10 test images (or of the images in "
                                                             f"--data FILE.npz); default: {DEFAULT_IMAGES}, or all "
                                                             "images of a smaller FILE.npz")
    p.add_argument("--sim", type=int, default=0, metavar="N",
                   help="also run the first N images through FINN's cppsim: the generated HLS C++ of every HLS "
                        "layer, compiled with g++ against the open-source ap_int headers and finn-hlslib "
                        "(BNNFLOW_HLS_DEPS or ../shared/vendor, or a Vitis HLS install), and every RTL layer in Verilator, "
                        "one node at a time. Binaries are cached in BUILD/cppsim and BUILD/verilator. "
                        "Default: %(default)s (off)")
    add_data_args(p, help_text="images to verify on: your own FILE.npz with keys x (uint8 N x H x "
                                              "W x C) and y (integer labels), or a CIFAR-10 folder "
                                              "(cifar-10-batches-py or its parent, or one holding "
                                              "cifar10_test.npz); default: $BNNFLOW_DATA or ../shared/data")


def cmd_verify(args) -> int:
    from rich.console import Console

    from bnnflow.atomic import write_json
    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import BREVITAS_FILE, ensure_build, run_build
    from bnnflow.build_flows.verify import print_verify, verify_build
    from bnnflow.cli_args import request_from_args
    from bnnflow.models.checkpoint import load_checkpoint
    from bnnflow.models.data import load_cifar10
    from bnnflow.user_images import check_images_fit, is_images_file, load_images_npz

    console = Console()
    if args.images is not None and args.images < 1:
        raise BnnflowError("--images must be at least 1.")
    if args.sim < 0:
        raise BnnflowError("--sim must be 0 (off) or a number of images.")
    if args.sim > (args.images or DEFAULT_IMAGES):
        raise BnnflowError(f"--sim {args.sim} is more than the {args.images or DEFAULT_IMAGES} images verified "
                           "(--images).")
    own = is_images_file(args.data)  # the user's own images and labels, checked against the network once built
    x, y = load_images_npz(args.data) if own else load_cifar10(args.data, "test", download=args.download)
    if args.images is None:
        args.images = max(min(DEFAULT_IMAGES, len(x)), args.sim) if own else DEFAULT_IMAGES
    if args.images > len(x):
        where = f"images in {args.data}" if own else "test images available"
        raise BnnflowError(f"--images {args.images} is more than the {len(x)} {where}.")
    req = request_from_args(args, stop_after=flow.FOLDED_STEP)
    if req.from_step:
        out = run_build(req, console)["out"]
    else:
        out, reused, _ = ensure_build(req, flow.FOLDED_STEP, console)
        if reused:
            console.print(f"Verifying the build in {out}.")
    from bnnflow.build_flows.onnx_input import onnx_build

    net = None if onnx_build(out) else load_checkpoint(out / BREVITAS_FILE)[0]  # a QONNX file is its own reference
    from bnnflow.build_flows.onnx_input import network_io

    if own:
        check_images_fit(x, y, args.data, *network_io(out))
    elif tuple(x.shape[1:]) != network_io(out)[0]:  # a network not made for CIFAR-10's 32 x 32 x 3
        raise BnnflowError(f"The network takes images of {' x '.join(map(str, network_io(out)[0]))} (H x W x C), "
                           "not CIFAR-10's 32 x 32 x 3: pass your own images with --data FILE.npz.")
    result = verify_build(out, net, x[:args.images], y, console, sim=args.sim)
    result["image_source"] = f"images of {args.data}" if own else "CIFAR-10 test images"
    write_json(out / "verify.json", result)
    print_verify(result, console)
    console.print(f"Report: {out / 'verify.json'}")
    return 0 if result["all_identical"] else 1


COMMANDS = {"verify": cmd_verify}
