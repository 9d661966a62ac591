"""`bnnflow deploy`: one folder (and a .zip of it) to copy onto the PYNQ board.

The package holds the bitfile and its .hwh when Vivado made them, the driver
(hw/driver/bnnflow_driver.py + packing.py, numpy and PYNQ only), the notebook, the first
CIFAR-10 test images with labels and the predictions the design makes on them, the final
hardware graph (for the driver's off-board backend), io_shape.json (the accelerator's input
and output streams) and manifest.json (what was built, how, with which tools, how fast).

Without Vivado the build stops after HLS/RTL code generation; the package is made all the
same, for the off-board backend, and says so. This module imports nothing heavy at import
time, so registering its parser keeps `bnnflow --help` instant.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

from bnnflow.atomic import atomic_dir, atomic_path, write_json, write_text
from bnnflow.errors import BnnflowError, MissingToolError

FORMAT = "bnnflow-deploy-1"
DRIVER_FILES = ("bnnflow_driver.py", "packing.py")
GRAPH_FILE = "hw_graph.onnx"
IMAGES_FILE = "test_images.npz"
FINAL_GRAPH_STEPS = ("hw_codegen", "generate_estimate_reports")  # the last tool-free partitions, newest first
FOLDING_ATTRS = ("PE", "SIMD", "parallel_window", "ram_style", "mem_mode", "resType")
TOOL_PACKAGES = ("finn-plus", "qonnx", "brevitas", "torch", "onnx", "numpy")
OFF_BOARD_NOTE = ("No bitfile (the build stopped before Vivado's bitstream step): this package runs the "
                  "design's functional model off the board only.")


def default_package_dir(model: str, variant: str, board: str) -> Path:
    return Path("deploy") / f"{model}-{variant}-{board}"


def add_deploy_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "deploy", help="make the folder (and .zip) to copy onto the board: bitfile, driver, notebook, images",
        description="Package a build for the PYNQ board: bitfile and .hwh (when Vivado made them), the numpy-only "
                    "PYNQ driver, the classify_cifar10 notebook, CIFAR-10 test images, the final hardware graph for "
                    "the driver's off-board backend, io_shape.json and manifest.json. Builds first when the build "
                    "folder holds no finished build; without Vivado the package runs off the board only.")
    p.add_argument("model", help="network: resnete, densenet, cnv")
    p.add_argument("--variant", default="default",
                   help="width/depth variant (see 'bnnflow models'); default: %(default)s")
    p.add_argument("--checkpoint", type=Path, help="trained .pt from 'bnnflow train'; default: the committed "
                                                     "models/checkpoints/MODEL-VARIANT.pt where one exists, else "
                                                     "random weights with batch-norm statistics calibrated on CIFAR-10")
    p.add_argument("--random-weights", action="store_true",
                   help="ignore the committed checkpoint and build calibrated random weights")
    p.add_argument("--board", default="pynq-z2", help="target board (see 'bnnflow boards'); default: %(default)s")
    p.add_argument("--build", type=Path, help="build folder to package, built there first if it holds no finished "
                                              "build; default: build/MODEL-VARIANT-BOARD")
    p.add_argument("--out", type=Path, help="package folder; default: deploy/MODEL-VARIANT-BOARD (plus .zip beside it)")
    p.add_argument("--images", type=int, default=100, help="CIFAR-10 test images to put in the package; "
                                                           "default: %(default)s")
    p.add_argument("--data", type=Path, help="CIFAR-10 copy: .npz, cifar-10-batches-py folder, or its parent")
    p.add_argument("--archive", choices=("zip", "tar.gz", "none"), default="zip",
                   help="archive of the package folder written beside it; default: %(default)s")
    p.add_argument("--force", action="store_true", help="rebuild the build folder from scratch first")
    p.add_argument("--target-fps", type=int, help="folding target when the board has no folding config for the model")
    p.add_argument("--folding", type=Path, help="folding config JSON instead of hw/folding/BOARD/MODEL-VARIANT.json")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights; default: %(default)s")
    return p


# ---------------------------------------------------------------------------- the build


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def final_graph_path(build: Path) -> Path | None:
    from . import flow

    for step in FINAL_GRAPH_STEPS:
        path = flow.intermediate_path(build, step)
        if path.is_file():
            return path
    return None


def _complete(build: Path) -> bool:
    """True if nothing more can be built here now: the tool-free steps ran and the next needs a missing tool."""
    from . import flow

    done = flow.BuildState(build).done
    if flow.LAST_TOOL_FREE_STEP not in done:
        return False
    nxt = flow.STEP_NAMES.index(done[-1]) + 1
    return nxt >= len(flow.STEPS) or not flow.tool_available(flow.STEPS[nxt].tool)


def ensure_build(args, console) -> Path:
    """The build folder to package, building or resuming it as far as the installed tools allow."""
    from . import flow
    from .build import BuildRequest, default_out, run_build

    build = Path(args.build or default_out(args.model, args.variant, args.board)).resolve()
    state = flow.BuildState(build, strict=not args.force)
    resume = False
    if state.path.exists() and not args.force:
        have = (state.data.get("model"), state.data.get("variant"), state.data.get("board"))
        if have != (args.model, args.variant, args.board):
            raise BnnflowError(f"Build folder {build} holds {'/'.join(map(str, have))}, not {args.model}/"
                               f"{args.variant}/{args.board}: pass the matching model or another --build.")
        if args.checkpoint is not None:
            want = _sha256(Path(args.checkpoint)) if Path(args.checkpoint).is_file() else None
            if want != state.data.get("checkpoint_sha256"):
                raise BnnflowError(f"Build folder {build} was built from other weights than {args.checkpoint}: "
                                   "pass --force to rebuild it, or another --build.")
        if _complete(build):
            console.print(f"Packaging the existing build in {build} (steps up to '{state.done[-1]}' done).")
            return build
        resume = bool(state.done)
    elif build.is_dir() and any(build.iterdir()) and not args.force:
        raise BnnflowError(f"Build folder {build} is not a bnnflow build: pass --force to replace it, "
                           "or another --build.")
    req = BuildRequest(model=args.model, variant=args.variant, board=args.board, checkpoint=args.checkpoint,
                       out=build, resume=resume, force=args.force or (state.path.exists() and not resume),
                       target_fps=args.target_fps, folding=args.folding, seed=args.seed)
    result = run_build(req, console)
    stopped = result.get("stopped")
    done = flow.BuildState(build).done
    if flow.LAST_TOOL_FREE_STEP not in done:
        raise BnnflowError(f"The build in {build} stopped before '{flow.LAST_TOOL_FREE_STEP}', so there is no final "
                           "hardware graph to package: see its build.log.")
    if isinstance(stopped, MissingToolError):
        console.print(f"[yellow]{stopped}[/]")
    return build


# ---------------------------------------------------------------------------- package contents


def _finn_settings(build: Path) -> dict:
    """FINN's own driver settings (driver/settings.json), written when Vivado made a bitfile."""
    path = build / "driver" / "settings.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("driver_information", {}).get("io_shape_dict", {}) or {}
    except (json.JSONDecodeError, AttributeError):
        return {}


def io_shape_from_graph(model) -> dict:
    """FINN's io_shape_dict for a one-input, one-output dataflow graph, from its first and last node."""
    from qonnx.custom_op.registry import getCustomOp

    from bnnflow.hw.driver.packing import packed_shape

    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise BnnflowError("The hardware graph has several inputs or outputs, which this driver does not support.")
    first = getCustomOp(model.graph.node[0])
    last = getCustomOp(model.graph.node[-1])
    idt = model.get_tensor_datatype(model.graph.input[0].name)
    odt = model.get_tensor_datatype(model.graph.output[0].name)
    ishape = tuple(model.get_tensor_shape(model.graph.input[0].name))
    oshape = tuple(model.get_tensor_shape(model.graph.output[0].name))
    ifold = tuple(int(d) for d in first.get_folded_input_shape())
    ofold = tuple(int(d) for d in last.get_folded_output_shape())
    return {
        "idt": [f"DataType['{idt.name}']"],
        "idma_names": ["idma0"],
        "ishape_normal": [list(ishape)],
        "ishape_folded": [list(ifold)],
        "ishape_packed": [list(packed_shape(ifold, idt.name))],
        "odt": [f"DataType['{odt.name}']"],
        "odma_names": ["odma0"],
        "oshape_normal": [list(oshape)],
        "oshape_folded": [list(ofold)],
        "oshape_packed": [list(packed_shape(ofold, odt.name))],
        "num_inputs": 1,
        "num_outputs": 1,
    }


def folding_of(model) -> dict:
    from qonnx.custom_op.registry import getCustomOp

    layers = {}
    for node in model.graph.node:
        inst = getCustomOp(node)
        types = inst.get_nodeattr_types()
        attrs = {a: inst.get_nodeattr(a) for a in FOLDING_ATTRS if a in types}
        layers[node.name] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()
                             if v not in ("", None)}
    return layers


def vivado_version() -> str:
    from bnnflow import compat

    root = compat.vivado_root()
    exe = shutil.which("vivado")
    if root is None and exe is None:
        return "none"
    if exe:
        try:
            out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=120).stdout
            if out.strip():
                return out.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return f"Vivado at {root or exe}"


def tool_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    tools = {"python": platform.python_version()}
    for name in ("bnnflow",) + TOOL_PACKAGES:
        try:
            tools[name] = version(name)
        except PackageNotFoundError:
            tools[name] = "not installed"
    tools["vivado"] = vivado_version()
    return tools


def find_bitfile(build: Path) -> tuple[Path, Path] | None:
    """FINN's bitfile and its hardware handoff (<build>/bitfile/finn-accel.bit + .hwh), if Vivado made them."""
    for bit in sorted((build / "bitfile").glob("*.bit")):
        hwh = bit.with_suffix(".hwh")
        if hwh.is_file():
            return bit, hwh
    return None


def _write_archive(folder: Path, kind: str) -> Path | None:
    if kind == "none":
        return None
    target = folder.with_name(folder.name + (".zip" if kind == "zip" else ".tar.gz"))
    with atomic_path(target) as tmp:
        if kind == "zip":
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        zf.write(path, Path(folder.name) / path.relative_to(folder))
        else:
            import tarfile

            with tarfile.open(tmp, "w:gz") as tf:
                tf.add(folder, arcname=folder.name)
        tmp.chmod(0o644)
    return target


def _check_out(out: Path) -> None:
    """Never replace a folder that is not a bnnflow package (atomic_dir swaps the whole folder)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BnnflowError(f"{out} exists and is not a folder: choose another --out.")
    manifest = out / "manifest.json"
    if any(out.iterdir()):
        try:
            ok = json.loads(manifest.read_text()).get("format") == FORMAT
        except (OSError, json.JSONDecodeError, AttributeError):
            ok = False
        if not ok:
            raise BnnflowError(f"{out} already exists and is not a bnnflow deployment package: choose another --out "
                               "or delete it first.")


def make_package(build: Path, out: Path, images: int = 100, data: Path | None = None, archive: str = "zip",
                 console=None) -> dict:
    """Write the deployment package for `build` into `out` (atomically) and its archive; return the manifest."""
    from rich.console import Console

    from bnnflow import compat

    compat.finn_ready()
    import numpy as np
    from qonnx.core.modelwrapper import ModelWrapper

    from bnnflow.hw.driver import bnnflow_driver
    from bnnflow.hw.driver.notebook import NOTEBOOK_NAME, notebook_text
    from bnnflow.models.data import CLASSES, load_cifar10

    from . import flow
    from .build import BREVITAS_FILE

    console = console or Console()
    build, out = Path(build).resolve(), Path(out).resolve()
    state = flow.BuildState(build)
    graph_path = final_graph_path(build)
    if not state.path.exists() or graph_path is None:
        raise BnnflowError(f"{build} holds no build that reached 'generate_estimate_reports': run 'bnnflow build' "
                           "first or pass another --build.")
    if images < 0:
        raise BnnflowError("--images must be 0 or more.")
    _check_out(out)
    summary = json.loads((build / "summary.json").read_text()) if (build / "summary.json").is_file() else {}
    model = ModelWrapper(str(graph_path))
    io = io_shape_from_graph(model)
    finn_io = _finn_settings(build)
    for key in ("idma_names", "odma_names", "ishape_packed", "oshape_packed"):
        if finn_io.get(key):  # FINN's own driver settings describe the bitfile itself
            io[key] = [list(s) if isinstance(s, (list, tuple)) else s for s in finn_io[key]]
    bit = find_bitfile(build)
    label_nodes = [n for n in model.graph.node if n.op_type.startswith("LabelSelect")]
    topk = int(io["oshape_normal"][0][-1])
    io.update({
        "format": FORMAT,
        "platform": "zynq-iodma",
        "model": state.data.get("model"),
        "variant": state.data.get("variant"),
        "board": state.data.get("board"),
        "input": "uint8 RGB pixels, N x 32 x 32 x 3 (channels last)",
        "output": f"top-{topk} class indices, best first (FINN LabelSelect: no scores)" if label_nodes
                  else "raw output values",
        "topk": topk,
        "classes": list(CLASSES),
        "fclk_mhz": summary.get("clock_mhz"),
        "estimated_fps": summary.get("fps"),
        "estimated_latency_ms": summary.get("latency_ms"),
        "bitfile": bit[0].name if bit else None,
        "graph": GRAPH_FILE,
    })
    weights = build / BREVITAS_FILE
    hardware_note = f"Bitfile {bit[0].name} for the board." if bit else OFF_BOARD_NOTE
    manifest = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": state.data.get("model"),
        "variant": state.data.get("variant"),
        "board": state.data.get("board"),
        "part": summary.get("part"),
        "clock_mhz": summary.get("clock_mhz"),
        "hardware": "bitfile" if bit else "none",
        "hardware_note": hardware_note,
        "backends": ["board", "functional model (no board)"] if bit else ["functional model (no board)"],
        "bitfile": bit[0].name if bit else None,
        "hwh": bit[1].name if bit else None,
        "checkpoint": state.data.get("checkpoint"),
        "checkpoint_sha256": state.data.get("checkpoint_sha256"),
        "weights_sha256": _sha256(weights) if weights.is_file() else None,
        "weights_origin": ("checkpoint" if state.data.get("checkpoint") else
                           f"random weights (seed {state.data.get('seed')}), batch-norm statistics calibrated on "
                           f"{state.data.get('calibration')}"),
        "folding": {"config": state.data.get("folding"), "target_fps": state.data.get("target_fps"),
                    "layers": folding_of(model)},
        "accuracy": {"checkpoint_test_top1": state.data.get("accuracy")},
        "estimates": {k: summary.get(k) for k in ("fps", "latency_ms", "bottleneck", "fits", "total", "utilisation")},
        "build": {"folder": str(build), "steps_done": state.done, "stopped_at": state.data.get("stopped_at"),
                  "graph": graph_path.name},
        "tools": tool_versions(),
    }

    with atomic_dir(out) as tmp:
        driver_dir = Path(bnnflow_driver.__file__).resolve().parent
        for name in DRIVER_FILES:
            shutil.copy2(driver_dir / name, tmp / name)
        write_text(tmp / NOTEBOOK_NAME, notebook_text())
        shutil.copy2(graph_path, tmp / GRAPH_FILE)
        if bit:
            shutil.copy2(bit[0], tmp / bit[0].name)
            shutil.copy2(bit[1], tmp / bit[1].name)
        write_json(tmp / "io_shape.json", io)
        if images:
            x, y = load_cifar10(data, "test")
            if images > len(x):
                raise BnnflowError(f"--images {images} is more than the {len(x)} CIFAR-10 test images available.")
            x, y = x[:images], np.asarray(y[:images], dtype=np.int64)
            # the package's own driver, off board, on the package's own files: checks them and gives the
            # board a reference to agree with image for image
            accel = bnnflow_driver.BnnflowAccelerator(tmp, batch_size=min(100, images), backend="functional",
                                                      quiet=True)
            t0 = time.time()
            expected = accel.classify(x)
            seconds = time.time() - t0
            np.savez_compressed(tmp / IMAGES_FILE, x=x, y=y, expected=expected.astype(np.int64))
            manifest["accuracy"].update({
                "package_images": images,
                "package_images_top1": float(np.mean(expected == y)),
                "measured_with": "the functional model of the final hardware graph (bit-exact with the design)",
            })
            manifest["functional_model_images_per_s"] = images / max(seconds, 1e-9)
        manifest["files"] = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(tmp / "manifest.json", manifest)
        for path in tmp.iterdir():  # temporary files are private; the package is for copying around
            path.chmod(0o644)
        tmp.chmod(0o755)
    archive_path = _write_archive(out, archive)
    manifest["_out"], manifest["_archive"] = str(out), str(archive_path) if archive_path else None
    return manifest


def print_package(manifest: dict, console) -> None:
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

    from bnnflow.hw.boards import get_board
    from bnnflow.models.zoo import get_variant

    console = Console()
    get_variant(args.model, args.variant)
    board = get_board(args.board).name
    args.board = board
    if args.images < 1:  # the package's notebook reads its test images
        raise BnnflowError(f"--images must be at least 1, not {args.images}: the package's notebook classifies "
                           "the CIFAR-10 test images packaged with it.")
    from .build import check_target_fps

    check_target_fps(args.target_fps, get_board(board))
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise BnnflowError(f"Checkpoint {args.checkpoint} does not exist: pass the .pt file written by "
                           "'bnnflow train'.")
    from bnnflow.models.data import load_cifar10

    x, _ = load_cifar10(args.data, "test")  # bad data fails now, not after a build of minutes
    if args.images > len(x):
        raise BnnflowError(f"--images {args.images} is more than the {len(x)} CIFAR-10 test images available.")
    build = ensure_build(args, console)
    out = Path(args.out or default_package_dir(args.model, args.variant, board))
    with console.status("Packaging (and classifying the packaged test images off board)..."):
        manifest = make_package(build, out, images=args.images, data=args.data, archive=args.archive, console=console)
    print_package(manifest, console)
    return 0
