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

import json
import platform
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

from bnnflow.atomic import atomic_dir, atomic_path, write_json, write_text
from bnnflow.digest import file_sha256
from bnnflow.errors import BnnflowError
from bnnflow.images import IMAGE_SHAPE

FORMAT = "bnnflow-deploy-1"
DRIVER_FILES = ("bnnflow_driver.py", "packing.py")
GRAPH_FILE = "hw_graph.onnx"
IMAGES_FILE = "test_images.npz"
FOLDING_ATTRS = ("PE", "SIMD", "parallel_window", "ram_style", "mem_mode", "resType")
TOOL_PACKAGES = ("finn-plus", "qonnx", "brevitas", "torch", "onnx", "numpy")
OFF_BOARD_NOTE = ("No bitfile (the build stopped before Vivado's bitstream step): this package runs the "
                  "design's functional model off the board only.")


def final_graph_path(build: Path) -> Path | None:
    """The last tool-free partition of a build: after code generation, else after the estimates."""
    from . import flow

    for step in (flow.CODEGEN_STEP, flow.ESTIMATE_STEP):
        path = flow.intermediate_path(build, step)
        if path.is_file():
            return path
    return None


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
    h, w, c = IMAGE_SHAPE
    # a network without convs (an FC net) keeps the NCHW input: the driver transposes the images it is given
    layout = {"input_layout": "NCHW"} if ishape[1:] == (c, h, w) and ishape[1:] != IMAGE_SHAPE else {}
    return {**layout,
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


def archive_path(folder: Path, kind: str) -> Path | None:
    """The archive written beside the package folder (--archive), or None."""
    return None if kind == "none" else folder.with_name(folder.name + (".zip" if kind == "zip" else ".tar.gz"))


def _write_archive(folder: Path, kind: str) -> Path | None:
    target = archive_path(folder, kind)
    if target is None:
        return None
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


def check_package_out(out: Path, archive: str) -> None:
    """Before any work: never replace a folder that is not a bnnflow package (atomic_dir swaps the whole
    folder), nor a file in the archive's place that is not an archive of one."""
    target = archive_path(out, archive)
    if target is not None and target.exists() and not _archives_package(target, out.name):
        raise BnnflowError(f"{target} already exists and is not an archive of a bnnflow deployment package: choose "
                           "another --out, --archive none, or delete it first.")
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


def _archives_package(path: Path, name: str) -> bool:
    """Whether `path` is a zip or tar.gz that holds NAME/manifest.json, as _write_archive writes them."""
    import tarfile

    member = f"{name}/manifest.json"
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return member in zf.namelist()
        with tarfile.open(path, "r:gz") as tf:
            return member in tf.getnames()
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError):
        return False


def make_package(build: Path, out: Path, images: int = 100, data: Path | None = None, archive: str = "zip",
                 console=None) -> dict:
    """Write the deployment package for `build` into `out` (atomically) and its archive; return the manifest."""
    from bnnflow import compat

    compat.finn_ready()
    from qonnx.core.modelwrapper import ModelWrapper

    from . import flow

    build, out = Path(build).resolve(), Path(out).resolve()
    state = flow.BuildState(build)
    graph_path = final_graph_path(build)
    if not state.path.exists() or graph_path is None:
        raise BnnflowError(f"{build} holds no build that reached '{flow.ESTIMATE_STEP}': run 'bnnflow build' "
                           "first or pass another --build.")
    if images < 0:
        raise BnnflowError("--images must be 0 or more.")
    check_package_out(out, archive)
    summary = json.loads((build / "summary.json").read_text()) if (build / "summary.json").is_file() else {}
    model = ModelWrapper(str(graph_path))
    bit = find_bitfile(build)
    io = package_io(model, build, state.data, summary, bit)
    manifest = package_manifest(build, state, summary, model, graph_path, bit)
    with atomic_dir(out) as tmp:
        _write_files(tmp, graph_path, bit, io)
        if images:
            manifest["accuracy"].update(_classify_images(tmp, images, data, manifest))
        manifest["files"] = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(tmp / "manifest.json", manifest)
        for path in tmp.iterdir():  # temporary files are private; the package is for copying around
            path.chmod(0o644)
        tmp.chmod(0o755)
    archive_path = _write_archive(out, archive)
    manifest["_out"], manifest["_archive"] = str(out), str(archive_path) if archive_path else None
    return manifest


def package_io(model, build: Path, state: dict, summary: dict, bit) -> dict:
    """io_shape.json: the accelerator's streams (FINN's own driver settings win where Vivado wrote them)."""
    from bnnflow.models.data import CLASSES

    io = io_shape_from_graph(model)
    finn_io = _finn_settings(build)
    for key in ("idma_names", "odma_names", "ishape_packed", "oshape_packed"):
        if finn_io.get(key):  # FINN's own driver settings describe the bitfile itself
            io[key] = [list(s) if isinstance(s, (list, tuple)) else s for s in finn_io[key]]
    label_nodes = [n for n in model.graph.node if n.op_type.startswith("LabelSelect")]
    topk = int(io["oshape_normal"][0][-1])
    h, w, c = IMAGE_SHAPE
    io.update({
        "format": FORMAT,
        "platform": "zynq-iodma",
        "model": state.get("model"),
        "variant": state.get("variant"),
        "board": state.get("board"),
        "input": f"uint8 RGB pixels, N x {h} x {w} x {c} (channels last)",
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
    return io


def package_manifest(build: Path, state, summary: dict, model, graph_path: Path, bit) -> dict:
    """manifest.json: what was built, how, with which tools, and how fast FINN estimates it."""
    from . import flow

    data = state.data
    weights = build / flow.BREVITAS_FILE
    return {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": data.get("model"),
        "variant": data.get("variant"),
        "board": data.get("board"),
        "part": summary.get("part"),
        "clock_mhz": summary.get("clock_mhz"),
        "hardware": "bitfile" if bit else "none",
        "hardware_note": f"Bitfile {bit[0].name} for the board." if bit else OFF_BOARD_NOTE,
        "backends": ["board", "functional model (no board)"] if bit else ["functional model (no board)"],
        "bitfile": bit[0].name if bit else None,
        "hwh": bit[1].name if bit else None,
        "checkpoint": data.get("checkpoint"),
        "checkpoint_sha256": data.get("checkpoint_sha256"),
        "weights_sha256": file_sha256(weights) if weights.is_file() else None,
        "weights_origin": ("checkpoint" if data.get("checkpoint") else
                           f"random weights (seed {data.get('seed')}), batch-norm statistics calibrated on "
                           f"{data.get('calibration')}"),
        "folding": {"config": data.get("folding"), "target_fps": data.get("target_fps"),
                    "layers": folding_of(model)},
        "accuracy": {"checkpoint_test_top1": data.get("accuracy")},
        "estimates": {k: summary.get(k) for k in ("fps", "latency_ms", "bottleneck", "fits", "total", "utilisation")},
        "build": {"folder": str(build), "steps_done": state.done, "stopped_at": data.get("stopped_at"),
                  "graph": graph_path.name},
        "tools": tool_versions(),
    }


def _write_files(tmp: Path, graph_path: Path, bit, io: dict) -> None:
    """Driver, notebook, hardware graph, bitfile (if any) and io_shape.json into the package folder."""
    from bnnflow.hw.driver import bnnflow_driver
    from bnnflow.hw.driver.notebook import NOTEBOOK_NAME, notebook_text

    driver_dir = Path(bnnflow_driver.__file__).resolve().parent
    for name in DRIVER_FILES:
        shutil.copy2(driver_dir / name, tmp / name)
    write_text(tmp / NOTEBOOK_NAME, notebook_text())
    shutil.copy2(graph_path, tmp / GRAPH_FILE)
    if bit:
        shutil.copy2(bit[0], tmp / bit[0].name)
        shutil.copy2(bit[1], tmp / bit[1].name)
    write_json(tmp / "io_shape.json", io)


def _classify_images(tmp: Path, images: int, data: Path | None, manifest: dict) -> dict:
    """The first CIFAR-10 test images, classified by the package's own driver off the board: checks the
    package's files and gives the board a reference to agree with image for image."""
    import numpy as np

    from bnnflow.hw.driver import bnnflow_driver
    from bnnflow.models.data import load_cifar10

    x, y = load_cifar10(data, "test")
    if images > len(x):
        raise BnnflowError(f"--images {images} is more than the {len(x)} CIFAR-10 test images available.")
    x, y = x[:images], np.asarray(y[:images], dtype=np.int64)
    accel = bnnflow_driver.BnnflowAccelerator(tmp, batch_size=min(100, images), backend="functional", quiet=True)
    t0 = time.time()
    expected = accel.classify(x)
    seconds = time.time() - t0
    np.savez_compressed(tmp / IMAGES_FILE, x=x, y=y, expected=expected.astype(np.int64))
    manifest["functional_model_images_per_s"] = images / max(seconds, 1e-9)
    return {"package_images": images, "package_images_top1": float(np.mean(expected == y)),
            "measured_with": "the functional model of the final hardware graph (bit-exact with the design)"}
