"""`bnnflow deploy`: the folder (and .zip) to copy onto the PYNQ board."""

from __future__ import annotations

from pathlib import Path

from bnnflow.cli_args import add_data_args, build_args
from bnnflow.errors import BnnflowError

ARCHIVES = ("zip", "tar.gz", "none")


def default_package_dir(model: str, variant: str, board: str) -> Path:
    from bnnflow.model_ref import is_user_model, parse_model_ref

    if is_user_model(model):  # a user's network: its short name, as its build folder
        return Path("deploy") / f"{parse_model_ref(model).short_name}-{board}"
    return Path("deploy") / f"{model}-{variant}-{board}"


def package_dir(args) -> Path:
    """--out, or deploy/MODEL-VARIANT-BOARD."""
    from bnnflow.hw.boards import get_board

    return Path(args.out or default_package_dir(args.model, args.variant, get_board(args.board).name))


def check_package(args) -> None:
    """The parser's check_outputs: a user's file or folder in the package's (or its archive's) place is refused
    before anything is loaded, said or built."""
    from bnnflow.build_flows.deploy import check_package_out

    check_package_out(package_dir(args), args.archive)


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "deploy", help="make the folder (and .zip) to copy onto the board: bitfile, driver, notebook, images",
        description="Package a build for the PYNQ board: bitfile and .hwh (when Vivado made them), the numpy-only "
                    "PYNQ driver, the classify_cifar10 notebook, CIFAR-10 test images, the final hardware graph for "
                    "the driver's off-board backend, io_shape.json and manifest.json. Builds first when the build "
                    "folder holds no finished build; without Vivado the package runs off the board only.")
    build_args(p, out_alias=False, restart=False)  # --out is the package here; it always reuses or builds
    p.add_argument("--out", type=Path, help="package folder; default: deploy/MODEL-VARIANT-BOARD (plus the "
                                            "archive beside it)")
    p.add_argument("--images", type=int, default=100, help="CIFAR-10 test images to put in the package; "
                                                           "default: %(default)s")
    add_data_args(p)
    p.add_argument("--archive", choices=ARCHIVES, default="zip",
                   help="archive of the package folder written beside it; default: %(default)s")
    p.set_defaults(check_outputs=check_package)


def print_package(manifest: dict, console) -> None:
    from bnnflow.build_flows.deploy import OFF_BOARD_NOTE

    out, archive = manifest["_out"], manifest["_archive"]
    console.print(f"Deployment package: [bold]{out}[/]" + (f"  (archive {archive})" if archive else ""))
    files = sorted([*manifest["files"], "manifest.json"])
    console.print(f"  {manifest['model']}/{manifest['variant']} for {manifest['board']}: {len(files)} files, "
                  + ", ".join(files))
    acc = manifest["accuracy"]
    if "package_images_top1" in acc:
        console.print(f"  top-1 on the {acc['package_images']} packaged CIFAR-10 test images: "
                      f"{acc['package_images_top1']:.1%} (functional model of the hardware graph)")
    est = manifest["estimates"]
    if est.get("fps"):
        console.print(f"  FINN's estimate: {est['fps']:,.0f} images/s, latency {est['latency_ms']:.2f} ms")
    if manifest["hardware"] == "bitfile":
        console.print(f"  [green]Board-ready:[/] {manifest['bitfile']} + {manifest['hwh']}.")
    else:
        console.print(f"  [yellow]Off-board only.[/] {OFF_BOARD_NOTE} With Vivado 2024.2 installed, "
                      "'bnnflow deploy' builds the bitfile too.")
    name = Path(out).name
    console.print(f"  On the board: scp -r {out} xilinx@pynq:/home/xilinx/jupyter_notebooks/ , then open "
                  f"http://pynq:9090 and run {name}/classify_cifar10.ipynb.")


def cmd_deploy(args) -> int:
    from rich.console import Console

    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import check_model, check_target_fps, ensure_build
    from bnnflow.build_flows.deploy import make_package
    from bnnflow.cli_args import request_from_args
    from bnnflow.hw.boards import get_board
    from bnnflow.models.data import load_cifar10

    console = Console()
    check_model(request_from_args(args))
    board = get_board(args.board)
    if args.images < 1:  # the package's notebook reads its test images
        raise BnnflowError(f"--images must be at least 1, not {args.images}: the package's notebook classifies "
                           "the CIFAR-10 test images packaged with it.")
    check_target_fps(args.target_fps, board)
    board.budget(args.lut_max, args.bram_max)
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise BnnflowError(f"Checkpoint {args.checkpoint} does not exist: pass the .pt file written by "
                           "'bnnflow train'.")
    x, _ = load_cifar10(args.data, "test", download=args.download)  # bad data fails now, not after a build of minutes
    if args.images > len(x):
        raise BnnflowError(f"--images {args.images} is more than the {len(x)} CIFAR-10 test images available.")
    build, reused, result = ensure_build(request_from_args(args), flow.STEP_NAMES[-1], console)
    if reused:
        console.print(f"Packaging the existing build in {build} (steps up to "
                      f"'{flow.BuildState(build).done[-1]}' done).")
    if flow.CODEGEN_STEP not in flow.BuildState(build).done:
        raise BnnflowError(f"The build in {build} stopped before '{flow.CODEGEN_STEP}', so there is no final "
                           "hardware graph to package: see its build.log.")
    from bnnflow.build_flows.onnx_input import network_io
    from bnnflow.images import IMAGE_SHAPE

    shape = network_io(build)[0]
    if shape != IMAGE_SHAPE:  # the package's notebook, test images and driver shapes are CIFAR-10's
        raise BnnflowError(f"The network takes images of {' x '.join(map(str, shape))} (H x W x C), but the "
                           "deployment package is made for CIFAR-10's 32 x 32 x 3 images: build and verify it, and "
                           "package it by hand from the build folder for now.")
    if result and result.get("stopped"):
        console.print(f"[yellow]{result['stopped']}[/]")
    out = package_dir(args)
    with console.status("Packaging (and classifying the packaged test images off board)..."):
        manifest = make_package(build, out, images=args.images, data=args.data, archive=args.archive, console=console)
    print_package(manifest, console)
    return 0


COMMANDS = {"deploy": cmd_deploy}
