"""FINN's own cppsim of every HLS layer, without Vitis HLS: `bnnflow verify --sim N`.

FINN's `PrepareCppSim` generates each HLS node's C++ testbench (finn-hlslib templates instantiated by
FINN), `CompileCppSim` compiles it with g++ and `execute_onnx(exec_mode="cppsim")` runs the graph,
HLS nodes through their binaries, RTL nodes through FINN's Python model of the node (FINN's own
behaviour in cppsim mode). The headers and libraries Vitis HLS would supply come from
hls_sources.py (a real Vitis install, the open-source ap_int headers and finn-hlslib, and the
project's stand-ins).

Compiled binaries are cached in BUILD/cppsim/ and reused while the folded graph, the shims, the
sources and the compiler flags are unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bnnflow import compat
from bnnflow.cores import usable_cores

from . import sim_ccache
from .hls_sources import HLSLIB_COMPAT, SHIMS, Sources, finn_cppsim_environment, hlslib_compat_needed, layout

CACHE_DIR = "cppsim"
CACHE_MODEL = "cppsim.onnx"
CACHE_KEY = "cache_key.json"
HLS = "HLS C++ (cppsim)"
PYTHON = "Python model"
# HLS nodes whose finn-hlslib function is the project's re-implementation (hw/hlslib_compat/pool.hpp)
HLS_REIMPLEMENTED = {"Pool_hls": "HLS C++ (cppsim), Pool API re-implemented by bnnflow"}


# ------------------------------------------------------------------ prepare, compile (cached), run


def _tree_digest(h, root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())


def cache_key(child, out: Path, sources: Sources, fast: bool) -> str:
    """What the compiled binaries depend on: the graph, the build folder (the generated code holds
    absolute paths into it), the shims, the third-party sources, finn-plus, g++ and the flags."""
    from importlib.metadata import PackageNotFoundError, version

    h = hashlib.sha256()
    h.update(child.model.SerializeToString())
    h.update(str(Path(out).resolve()).encode())
    h.update(json.dumps({"fast": fast, "sources": sources.describe(), "compile": sim_ccache.RUNNER}).encode())
    trees = [SHIMS, HLSLIB_COMPAT, sources.hlslib] + ([sources.ap_include] if sources.ap_include else [])
    for root in trees:
        _tree_digest(h, root)
    for p in sources.extra:
        h.update(p.read_bytes())
    try:
        h.update(version("finn-plus").encode())
    except PackageNotFoundError:
        pass
    r = subprocess.run(["g++", "--version"], capture_output=True, text=True)
    h.update(r.stdout.encode())
    return h.hexdigest()


def _hls_nodes(model) -> list:
    from finn.util.fpgadataflow import is_hls_node

    return [n for n in model.graph.node if is_hls_node(n)]


def _node_attr(model, node, name):
    from qonnx.custom_op.registry import getCustomOp

    return getCustomOp(node).get_nodeattr(name)


@dataclass
class Prepared:
    model: object  # ModelWrapper in cppsim exec mode
    reused: bool
    seconds: float
    sources: Sources
    shim_warnings: list[str] = field(default_factory=list)  # set by run_images
    ccache: dict = field(default_factory=dict)  # hits/misses of this compile (sim_ccache.log_stats)


def prepare(out: Path, child, sources: Sources, fast: bool = True, workers: int | None = None) -> Prepared:
    """The folded graph `child` of build `out`, with every HLS node's cppsim binary compiled (or reused)."""
    from qonnx.core.modelwrapper import ModelWrapper

    out = Path(out).resolve()
    cache = out / CACHE_DIR
    key = cache_key(child, out, sources, fast)
    t0 = time.time()
    try:
        saved = json.loads((cache / CACHE_KEY).read_text())
    except (OSError, ValueError):
        saved = {}
    if saved.get("key") == key and (cache / CACHE_MODEL).is_file():
        m = ModelWrapper(str(cache / CACHE_MODEL))
        if all(Path(_node_attr(m, n, "executable_path") or "/nonexistent").is_file() for n in _hls_nodes(m)):
            return Prepared(m, True, time.time() - t0, sources)
    from finn.transformation.fpgadataflow.compile_cppsim import CompileCppSim
    from finn.transformation.fpgadataflow.prepare_cppsim import PrepareCppSim
    from finn.transformation.fpgadataflow.set_exec_mode import SetExecMode

    from .flow import quiet_finn_logger

    if cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True)
    xhls, deps = layout(sources, cache / "env")
    workers = workers or min(usable_cores(), 4)
    m = ModelWrapper(copy.deepcopy(child.model))  # the caller's graph stays as it is
    with finn_cppsim_environment(xhls, deps, cache / "code"), quiet_finn_logger():
        m = m.transform(PrepareCppSim(num_workers=workers))
        # compat's flag filter inside ours: it wraps our split, ccache'd compile (sim_ccache)
        with sim_ccache.cppsim_builder(cache / "env", cache), compat.cppsim_fast_flags(fast):
            m = m.transform(CompileCppSim(num_workers=workers))
    m = m.transform(SetExecMode("cppsim"))
    m.save(str(cache / CACHE_MODEL))
    (cache / CACHE_KEY).write_text(json.dumps({"key": key, "fast_flags": fast,
                                               "sources": sources.describe()}, indent=1) + "\n")
    return Prepared(m, False, time.time() - t0, sources, ccache=sim_ccache.log_stats(cache / sim_ccache.STATS_LOG))


def run_images(prepared: Prepared, x: np.ndarray, rtlsim_packing: bool = False) -> tuple[dict[str, np.ndarray], float,
                                                                                        set[str]]:
    """Every tensor of the graph (batch first) for the images x (N x graph input shape[1:]), one image at a
    time; the seconds it took; and the HLS nodes whose binary wrote its output for every image (the proof
    that the node ran as C++, not as a Python fallback). `rtlsim_packing`: let FINN pack each HLS input for
    rtlsim as well, as it does unpatched (compat.cppsim_without_rtlsim_packing; same outputs, slower)."""
    from finn.core.onnx_exec import execute_onnx

    m = prepared.model
    inp = m.graph.input[0].name
    outputs = {n.name: [Path(_node_attr(m, n, "code_gen_dir_cppsim")) / f"output_{k}.npy" for k in range(len(n.output))]
               for n in _hls_nodes(m)}
    per_image: list[dict] = []
    ran = set(outputs)
    seconds = 0.0
    cwd = os.getcwd()
    warnings_seen = _ShimWarnings()
    log = logging.getLogger("finn_logger")
    level = log.level
    log.setLevel(min(log.getEffectiveLevel(), logging.WARNING))  # FINN logs a binary's stderr as WARNING
    log.addHandler(warnings_seen)
    try:
        with tempfile.TemporaryDirectory(prefix="bnnflow_cppsim_") as tmp, \
                compat.cppsim_without_rtlsim_packing(not rtlsim_packing):
            os.chdir(tmp)  # FINN's Python models of some RTL nodes write scratch files to the cwd
            for img in x:
                for files in outputs.values():
                    for f in files:
                        f.unlink(missing_ok=True)
                t0 = time.time()
                ctx = execute_onnx(m, {inp: np.asarray(img, dtype=np.float32)[None]}, return_full_exec_context=True)
                seconds += time.time() - t0
                ran &= {name for name, files in outputs.items() if all(f.is_file() for f in files)}
                per_image.append(ctx)
    finally:
        os.chdir(cwd)
        log.removeHandler(warnings_seen)
        log.setLevel(level)
    prepared.shim_warnings = warnings_seen.lines
    names = [t for n in m.graph.node for t in n.output]
    return {t: np.concatenate([c[t] for c in per_image]) for t in names}, seconds, ran


class _ShimWarnings(logging.Handler):
    """Collects what the hls_stream.h shim printed (FINN logs a binary's stderr): a read from an empty
    stream or data left in a stream means the C++ did not consume/produce what FINN expected."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        for line in str(record.getMessage()).splitlines():
            if line.startswith("hls_shim:") and line not in self.lines:
                self.lines.append(line)


def node_kinds(model, sources: Sources) -> dict[str, str]:
    """node name -> what it ran as in cppsim mode (HLS, PYTHON, or HLS with our re-implemented Pool API)."""
    from finn.util.fpgadataflow import is_hls_node

    ours = HLS_REIMPLEMENTED if hlslib_compat_needed(sources.hlslib)["pool.hpp"] else {}
    return {n.name: (ours.get(n.op_type, HLS) if is_hls_node(n) else PYTHON) for n in model.graph.node}
