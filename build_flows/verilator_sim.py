"""FINN's RTL layers in Verilator, one node at a time, on real activations: `bnnflow verify --sim N`.

Each node's bench (verilator_build.py) streams the node's inputs, packed as FINN's own rtlsim packs
them (rtl_packing.py; MVAU_rtl also gets its weight stream on in1), and its outputs are unpacked the
same way; every output is compared with the functional model's, and the bench's cycle counts are kept
for the stream model's cross-check (fifo_crosscheck.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import rtl_packing, sim_ccache
from .verilator_build import (CACHE_DIR, NodeBuild, build_all, stream_inputs, unavailable, verilator_exe,
                              verilator_version)


# ------------------------------------------------------------------ running a node on real activations


def pack_inputs(model, inst, node, tensors: dict, n: int, src: Path) -> dict[int, list[int]]:
    """Every streamed input of the node for n images, packed as FINN's rtlsim packs it."""
    from qonnx.core.datatype import DataType

    words = {}
    for k in stream_inputs(inst, node):
        if model.get_initializer(node.input[k]) is None:
            x = tensors[node.input[k]].reshape((n,) + tuple(inst.get_folded_input_shape(k))[1:])
            dt = inst.get_input_datatype(k)
            if dt == DataType["BIPOLAR"]:  # streamed as bits, as FINN does
                x, dt = (x + 1) / 2, DataType["BINARY"]
            words[k] = rtl_packing.pack(x, dt, inst.get_instream_width(k))
            continue
        wfile = src / f"input_{k}.npy"
        if not wfile.is_file():
            w = model.get_initializer(node.input[k])
            inst.make_weight_file(w.reshape(-1, w.shape[-1]), "decoupled_npy", str(wfile))
        one = rtl_packing.pack(np.load(wfile), inst.get_input_datatype(k), inst.get_instream_width(k))
        reps = int(np.prod(inst.get_nodeattr("numInputVectors"))) // int(inst.get_nodeattr("TH") or 1)
        words[k] = one * reps * n
    return words


@dataclass
class NodeRun:
    outputs: dict[str, np.ndarray]  # output tensor name -> n images
    cycles_first: int  # cycles from reset to the first image's last output word
    cycles_per_image: float  # steady state (images 2..n), or cycles_first for one image
    seconds: float


def run_node(model, nb: NodeBuild, tensors: dict, n: int, stall_cycles: int = 200000) -> NodeRun:
    """Run one compiled bench on n images' inputs (tensors: graph tensors, batch first)."""
    from qonnx.custom_op.registry import getCustomOp

    t0 = time.time()  # packing and unpacking included: FINN's packers take longer than most benches
    node = model.get_node_from_name(nb.name)
    inst = getCustomOp(node)
    io = nb.src.parent / "io"
    if io.exists():
        shutil.rmtree(io)
    io.mkdir()
    for k, ws in pack_inputs(model, inst, node, tensors, n, nb.src).items():
        (io / f"in{k}.hex").write_text("".join(f"{w:x}\n" for w in ws))
    per_image = [int(np.prod(inst.get_folded_output_shape(k)[:-1])) for k in range(len(node.output))]
    r = subprocess.run([str(nb.exe), str(io), str(n), *map(str, per_image)], cwd=nb.src, capture_output=True,
                       text=True, env={**os.environ, "BNNFLOW_STALL_CYCLES": str(stall_cycles)})
    if r.returncode != 0:
        raise RuntimeError(f"{nb.name}: the Verilator bench failed ({(r.stderr or r.stdout).strip()[:200]})")
    outputs = {}
    for k, name in enumerate(node.output):
        words = [int(line, 16) for line in (io / f"out{k}.hex").read_text().split()]
        odt = inst.get_output_datatype(k)
        shape = (n,) + tuple(inst.get_folded_output_shape(k))[1:]
        arr = rtl_packing.unpack(words, odt, shape, inst.get_outstream_width(k))
        outputs[name] = np.asarray(arr, dtype=np.float32).reshape((n,) + tuple(inst.get_normal_output_shape(k))[1:])
    done = [int(c) for c in (io / "cycles.txt").read_text().split()]
    steady = (done[-1] - done[0]) / (len(done) - 1) if len(done) > 1 else float(done[0])
    return NodeRun(outputs, done[0], steady, time.time() - t0)


def simulate(out: Path, model, tensors: dict, n: int, workers: int | None = None) -> dict:
    """Every RTL node of `model` (the folded graph of build `out`) in Verilator on n images, each output
    compared with `tensors` (the functional model's, batch first, graph input included). One sentence
    ({"skipped": ...}) when Verilator cannot run here."""
    why = unavailable()
    if why is not None:
        return {"skipped": why}
    t0 = time.time()
    m, builds = build_all(out, model, workers)
    compile_seconds = time.time() - t0
    nodes, differing, failed, seconds = {}, [], [], 0.0
    for nb in builds:
        row = {"op_type": nb.op_type, "ran_as": nb.kind, "reused": nb.reused, "kept_elsewhere": nb.kept_elsewhere}
        nodes[nb.name] = row
        if nb.exe is None:
            continue
        try:
            r = run_node(m, nb, tensors, n)
        except (RuntimeError, OSError, ValueError) as e:
            row["ran_as"] = f"{nb.kind}: failed"
            failed.append(f"{nb.name}: {e}")
            continue
        seconds += r.seconds
        same = {t: bool(np.array_equal(v, tensors[t].reshape(v.shape))) for t, v in r.outputs.items()}
        differing += [t for t, ok in same.items() if not ok]
        row.update(identical=all(same.values()), cycles_first_image=r.cycles_first,
                   cycles_per_image=r.cycles_per_image, seconds=r.seconds)
    ran = [k for k, v in nodes.items() if "identical" in v]
    return {"verilator": verilator_version(verilator_exe()), "nodes": nodes, "compile_seconds": compile_seconds,
            "ccache": sim_ccache.log_stats(Path(out).resolve() / CACHE_DIR / sim_ccache.STATS_LOG),
            "binaries_reused": sum(v["reused"] for v in nodes.values()),
            "binaries_kept_elsewhere": sum(v["kept_elsewhere"] for v in nodes.values()), "run_seconds": seconds,
            "nodes_run": len(ran), "tensors_compared": sum(len(model.get_node_from_name(k).output) for k in ran),
            "tensors_differing": differing, "failed": failed,
            "all_identical": not differing and not failed}
