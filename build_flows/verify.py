"""`bnnflow verify`: real CIFAR-10 images through Brevitas and every FINN stage, compared exactly.

Stages: Brevitas (PyTorch, in float64 as the exact reference, and in float32 for
information) -> QONNX (qonnx execution) -> streamlined FINN graph -> HW-layer
graph -> specialised, folded graph (functional execution of every *_hls/*_rtl node through its
generic op with the final, minimised datatypes; see functional.py). Each stage's logits are
mapped into the hardware's integer domain (the classifier's scale/offset that FINN absorbs
into TopK) and compared for exact equality with Brevitas, plus top-1.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bnnflow.errors import BnnflowError
from bnnflow.images import IMAGE_SHAPE, nchw_float, nhwc

from . import flow
from .steps import LOGIT_AFFINE_KEY

STREAMLINED_STEP, HW_STEP, FOLDED_STEP = flow.STREAMLINED_STEP, flow.HW_STEP, flow.FOLDED_STEP
# Float logits map to integers within float error: the logit scale itself is a float32 product.
INTEGER_TOLERANCE = 1e-3
RELATIVE_TOLERANCE = 2e-6


@dataclass
class StageResult:
    name: str
    logits: np.ndarray | None = None  # integer-domain logits, N x classes
    top1: np.ndarray | None = None
    seconds: float = 0.0
    note: str = ""
    identical: int = 0
    same_top1: int = 0
    extra: dict = field(default_factory=dict)


def _affine(model) -> tuple[float, float]:
    raw = model.get_metadata_prop(LOGIT_AFFINE_KEY)
    if raw is None:
        raise BnnflowError("This build predates logit bookkeeping (no bnnflow_logit_affine): rebuild it with --force.")
    a, b = json.loads(raw)
    return float(a), float(b)


def to_integer_domain(logits: np.ndarray, a: float, b: float) -> tuple[np.ndarray, float]:
    """Map float logits to the hardware's integers: (logits - b) / a, and how far the worst one is
    from its integer beyond float error (0 when all are integers)."""
    z = (logits.astype(np.float64) - b) / a
    r = np.rint(z)
    excess = np.abs(z - r) - RELATIVE_TOLERANCE * np.abs(r)
    return r.astype(np.int64), float(max(0.0, np.max(excess))) if z.size else 0.0


def run_brevitas(net, x_nchw: np.ndarray, batch: int = 100, double: bool = True) -> np.ndarray:
    """Brevitas logits; in float64 by default: float32 rounding can turn an exact .5 tie of the
    model's arithmetic into a different integer (seen on ~1 % of images), while FINN's
    thresholds are exact."""
    import copy

    import torch

    dtype = torch.float64 if double else torch.float32
    net = copy.deepcopy(net).to(dtype)
    outs = []
    with torch.no_grad():
        for i in range(0, len(x_nchw), batch):
            outs.append(net(torch.from_numpy(x_nchw[i:i + batch]).to(dtype)).numpy())
    return np.concatenate(outs)


def run_qonnx(path: Path, x_nchw: np.ndarray, batch: int = 100) -> np.ndarray:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    base = ModelWrapper(str(path))
    outs, models = [], {}
    for i in range(0, len(x_nchw), batch):
        chunk = x_nchw[i:i + batch]
        n = len(chunk)
        if n not in models:  # qonnx executes at the graph's annotated batch size
            models[n] = base.transform(ChangeBatchSize(n)).transform(InferShapes())
        m = models[n]
        out = execute_onnx(m, {m.graph.input[0].name: chunk})
        outs.append(out[m.graph.output[0].name])
    return np.concatenate(outs).reshape(len(x_nchw), -1)


def _topk_input(model) -> str:
    for op in ("TopK", "LabelSelect", "LabelSelect_hls"):
        nodes = model.get_nodes_by_op_type(op)
        if nodes:
            return nodes[0].input[0]
    raise BnnflowError("The graph has no TopK/LabelSelect node, so it cannot be verified against Brevitas.")


def run_finn_graph(model, x: np.ndarray) -> np.ndarray:
    from .functional import execute_graph

    name = _topk_input(model)
    out = execute_graph(model, x, tensors=[name])
    return out[name].reshape(len(x), -1)


def folded_model_and_input(out_dir: Path, x_nchw: np.ndarray):
    """The final dataflow partition and its input (the parent graph only transposes NCHW -> NHWC)."""
    from qonnx.core.modelwrapper import ModelWrapper

    parent = ModelWrapper(str(flow.dataflow_parent(out_dir)))
    outside = [n.op_type for n in parent.graph.node if n.op_type != "StreamingDataflowPartition"]
    if outside not in ([], ["Transpose"]):
        raise BnnflowError(f"Nodes {outside} stayed outside the hardware partition: the design is not all-hardware.")
    child = ModelWrapper(str(flow.intermediate_path(out_dir, FOLDED_STEP)))
    shape = child.get_tensor_shape(child.graph.input[0].name)
    x = nhwc(x_nchw) if tuple(shape[1:]) == IMAGE_SHAPE else x_nchw
    return child, x


def cppsim_rtlsim_note(sim: int = 0) -> str:
    hls = flow.tool_available(flow.VITIS_HLS)
    viv = flow.tool_available(flow.VIVADO)
    if hls and viv:
        return "rtlsim: tools found; run 'bnnflow build' to the 'measure_rtlsim_performance' step for rtlsim."
    rtl = "rtlsim was not run: it needs Vivado xsim, which is not installed"
    if sim:
        return rtl + "."
    return (rtl + "; HLS C++ simulation (cppsim) runs with --sim N, and the folded graph was checked by "
            "functional execution.")


def agreement(logits: np.ndarray, ref_logits: np.ndarray) -> tuple[int, int]:
    """(images with identical integer logits, images with the same top-1) of two integer-logit arrays."""
    return (int(np.sum(np.all(logits == ref_logits, axis=1))),
            int(np.sum(logits.argmax(1) == ref_logits.argmax(1))))


def compare(stages: list[StageResult], ref: StageResult) -> None:
    for st in stages:
        if st.logits is not None:
            st.identical, st.same_top1 = agreement(st.logits, ref.logits)


def hardware_logits(out_dir: Path, x_uint8: np.ndarray) -> np.ndarray:
    """Integer logits of the specialised, folded graph of a build on uint8 N x H x W x C images."""
    child, xf = folded_model_and_input(out_dir, nchw_float(x_uint8))
    return np.rint(run_finn_graph(child, xf)).astype(np.int64)


def compare_with_brevitas(out_dir: Path, x_uint8: np.ndarray, y: np.ndarray,
                          checkpoint_logits: np.ndarray | None = None) -> dict:
    """The folded graph of a build vs the Brevitas weights the build exported, in float64 (verify's
    reference: the tie-guarded weights; float32 can round an exact .5 tie the other way). With
    `checkpoint_logits` (the checkpoint's own float32 pass), also how many top-1s match those."""
    from qonnx.core.modelwrapper import ModelWrapper

    from bnnflow.models.checkpoint import load_checkpoint

    a, b = _affine(ModelWrapper(str(flow.intermediate_path(out_dir, STREAMLINED_STEP))))
    net, _ = load_checkpoint(out_dir / flow.BREVITAS_FILE)
    ref, worst = to_integer_domain(run_brevitas(net, nchw_float(x_uint8)), a, b)
    hw = hardware_logits(out_dir, x_uint8)
    identical, same_top1 = agreement(hw, ref)
    result = {"images": len(x_uint8), "same_top1": same_top1, "identical_integer_logits": identical,
              "brevitas_top1": float(np.mean(ref.argmax(1) == y)), "hardware_top1": float(np.mean(hw.argmax(1) == y)),
              "brevitas_max_distance_to_integer": worst, "build": str(out_dir)}
    if checkpoint_logits is not None:
        result["same_top1_as_checkpoint_float32"] = int(np.sum(hw.argmax(1) == checkpoint_logits.argmax(1)))
    return result


def verify_build(out_dir: Path, net, x_uint8: np.ndarray, labels: np.ndarray | None = None,
                 console: Console | None = None, sim: int = 0) -> dict:
    """Run all stages on images (N x 32 x 32 x 3 uint8) for the build in out_dir and net (its Brevitas model);
    with sim > 0 also the first `sim` images through FINN's cppsim of every HLS layer (run_cppsim_stage)."""
    from qonnx.core.modelwrapper import ModelWrapper

    console = console or Console()
    x = nchw_float(x_uint8)
    n = len(x)
    streamlined = ModelWrapper(str(flow.intermediate_path(out_dir, STREAMLINED_STEP)))
    a, b = _affine(streamlined)
    stages: list[StageResult] = []

    def timed(name, fn, to_int):
        with console.status(f"Running {n} images through {name}..."):
            t0 = time.time()
            raw = fn()
            dt = time.time() - t0
        st = StageResult(name, seconds=dt)
        if to_int:
            st.logits, worst = to_integer_domain(raw, a, b)
            st.extra["max_distance_to_integer"] = worst
            if worst > INTEGER_TOLERANCE:
                st.note = f"logits are not integers of the hardware scale (off by up to {worst:.3g})"
        else:
            st.logits = np.rint(raw).astype(np.int64)
            if np.any(st.logits != raw):
                st.note = "non-integer values in the hardware graph"
        st.top1 = np.argmax(st.logits, axis=1)
        stages.append(st)
        console.print(f"  {name:<28} {n / max(dt, 1e-9):8.1f} images/s")

    timed("Brevitas (PyTorch, float64)", lambda: run_brevitas(net, x), True)
    timed("Brevitas (PyTorch, float32)", lambda: run_brevitas(net, x, double=False), True)
    timed("QONNX (qonnx exec)", lambda: run_qonnx(out_dir / flow.QONNX_FILE, x), True)
    timed("streamlined FINN graph", lambda: run_finn_graph(streamlined, x), False)
    hw = ModelWrapper(str(flow.intermediate_path(out_dir, HW_STEP)))
    timed("HW-layer graph", lambda: run_finn_graph(hw, x), False)
    child, xf = folded_model_and_input(out_dir, x)
    timed("specialised + folded graph", lambda: run_finn_graph(child, xf), False)
    ref, folded = stages[0], stages[-1]
    compare(stages, ref)
    sim_info = None
    if sim > 0:
        sim_stage, sim_info = run_cppsim_stage(out_dir, child, xf[:sim], console)
        if sim_stage is not None:
            sim_stage.identical, sim_stage.same_top1 = agreement(sim_stage.logits, ref.logits[:sim])
            stages.append(sim_stage)
    informative = {"Brevitas (PyTorch, float32)"}  # what users run; float32 ties are not FINN's doing

    def images(s: StageResult) -> int:
        return len(s.logits)

    result = {
        "images": n,
        "logit_affine": [a, b],
        "stages": [{"stage": s.name, "images": images(s), "identical_integer_logits": s.identical,
                    "same_top1": s.same_top1, "images_per_second": images(s) / max(s.seconds, 1e-9),
                    "note": s.note, **s.extra} for s in stages],
        "all_identical": all(s.identical == images(s) for s in stages if s.name not in informative)
        and (sim_info is None or sim_info.get("all_tensors_identical", True)),
        "cppsim_rtlsim": cppsim_rtlsim_note(sim),
    }
    if sim_info is not None:
        result["cppsim"] = sim_info
    if labels is not None:
        result["brevitas_top1_accuracy"] = float(np.mean(ref.top1 == labels[:n]))
        result["hardware_top1_accuracy"] = float(np.mean(folded.top1 == labels[:n]))
    return result


def print_verify(result: dict, console: Console) -> None:
    n = result["images"]
    table = Table(title=f"Bit-exactness on {n} CIFAR-10 test images (reference: Brevitas)")
    for col in ("stage", "identical integer logits", "same top-1", "images/s", "note"):
        table.add_column(col, justify="left" if col in ("stage", "note") else "right")
    for s in result["stages"]:
        k = s.get("images", n)
        ok = "green" if s["identical_integer_logits"] == k else "red"
        table.add_row(s["stage"], f"[{ok}]{s['identical_integer_logits']}/{k}[/]", f"{s['same_top1']}/{k}",
                      f"{s['images_per_second']:.2f}" if s["images_per_second"] < 10 else f"{s['images_per_second']:.1f}",
                      s["note"])
    console.print(table)
    if "cppsim" in result:
        print_cppsim(result["cppsim"], console)
    if "brevitas_top1_accuracy" in result:
        console.print(f"Top-1 accuracy on these images: Brevitas {result['brevitas_top1_accuracy']:.1%}, "
                      f"hardware graph {result['hardware_top1_accuracy']:.1%}.")
    console.print(result["cppsim_rtlsim"])
    if result["all_identical"]:
        console.print(f"[green]Every stage is identical to Brevitas on all {n} images.[/]")
    else:
        console.print("[red]Some stage differs from Brevitas: see the table.[/]")


# ------------------------------------------------------------------ HLS C++ simulation (--sim N)

CPPSIM_STAGE = "HLS C++ (cppsim)"


def run_cppsim_stage(out_dir: Path, child, x: np.ndarray, console: Console) -> tuple[StageResult | None, dict]:
    """FINN's cppsim of the folded graph on x (graph-input layout): its logits as a stage, and what ran as
    what, every tensor compared with the functional model; every RTL node also in Verilator, one node at a
    time on the same images (verilator_sim; one sentence without Verilator). (None, {"skipped": sentence})
    when the cppsim sources or the compiler are missing."""
    from . import cppsim
    from .functional import execute_graph

    why = cppsim.unavailable()
    if why is not None:
        return None, {"skipped": why}
    sources = cppsim.find_sources()
    n = len(x)
    with console.status("Compiling every HLS layer for cppsim (FINN's PrepareCppSim + CompileCppSim)..."):
        try:
            prepared = cppsim.prepare(out_dir, child, sources)
        except Exception as e:  # a compile error is this stage's failure, reported as one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BnnflowError(f"The HLS C++ simulation could not be compiled ({first.rstrip('.')}); "
                               f"the generated code is in {Path(out_dir) / cppsim.CACHE_DIR}.") from None
    with console.status(f"Running {n} images through FINN's cppsim..."):
        try:
            tensors, seconds, ran = cppsim.run_images(prepared, x)
        except Exception as e:  # a crashing binary is this stage's failure, reported as one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BnnflowError(f"The HLS C++ simulation failed while running ({first.rstrip('.')}); "
                               f"the binaries are in {Path(out_dir) / cppsim.CACHE_DIR}.") from None
    model = prepared.model
    name = _topk_input(model)
    st = StageResult(CPPSIM_STAGE, seconds=seconds)
    raw = tensors[name].reshape(n, -1)
    st.logits = np.rint(raw).astype(np.int64)
    if np.any(st.logits != raw):
        st.note = "non-integer values in the hardware graph"
    st.top1 = np.argmax(st.logits, axis=1)
    console.print(f"  {CPPSIM_STAGE:<28} {n / max(seconds, 1e-9):8.2f} images/s "
                  f"({'reused' if prepared.reused else 'compiled'} binaries: {prepared.seconds:.0f} s)")
    ref = execute_graph(model, x, tensors=list(tensors))
    differ = [t for t in tensors if not np.array_equal(tensors[t].reshape(ref[t].shape), ref[t])]
    rtl = _run_verilator(out_dir, child, {**ref, model.graph.input[0].name: x}, n, console)
    kinds = cppsim.node_kinds(model, sources)
    kinds.update({k: row["ran_as"] for k, row in rtl.get("nodes", {}).items()})
    hls = [nd.name for nd in cppsim._hls_nodes(model)]
    not_run = [k for k in hls if k not in ran]
    in_verilator = [k for k, row in rtl.get("nodes", {}).items() if "identical" in row]
    st.note = (st.note + "; " if st.note else "") + (
        f"{len(hls)} HLS nodes in C++, {len(in_verilator)} RTL nodes also in Verilator, "
        f"{len(kinds) - len(hls) - len(in_verilator)} in Python only; "
        f"{len(tensors) - len(differ)}/{len(tensors)} tensors = functional model")
    info = {
        "images": n,
        "sources": sources.describe(),
        "stand_ins": cppsim.stand_ins(sources),
        "compile_seconds": prepared.seconds,
        "binaries_reused": prepared.reused,
        "seconds_per_image": seconds / max(n, 1),
        "nodes": kinds,
        "node_types": node_types(model, kinds, rtl),
        "hls_nodes_not_run": not_run,
        "tensors_compared": len(tensors),
        "tensors_differing": differ,
        "shim_warnings": prepared.shim_warnings,
        "verilator": rtl,
        "all_tensors_identical": not differ and not not_run and rtl.get("all_identical", True),
    }
    return st, info


def _run_verilator(out_dir: Path, child, ref: dict, n: int, console: Console) -> dict:
    """Every RTL node in Verilator on the same n images (verilator_sim.simulate), or {"skipped": sentence}."""
    from . import verilator_sim

    with console.status("Compiling (or reusing) and running every RTL layer in Verilator..."):
        rtl = verilator_sim.simulate(out_dir, child, ref, n)
    if "skipped" not in rtl:
        console.print(f"  {'RTL layers (Verilator)':<28} {rtl['nodes_run']} nodes, {rtl['run_seconds']:.1f} s "
                      f"({rtl['binaries_reused']} reused binaries, {rtl['compile_seconds']:.0f} s to compile)")
    return rtl


def node_types(model, kinds: dict[str, str], rtl: dict) -> dict[str, dict]:
    """op type -> {nodes, ran_as (one kind, or 'kind xN; ...' when its nodes differ), identical (RTL nodes in
    Verilator), cycles per image (the slowest node of the type, Verilator)}."""
    rows: dict[str, dict] = {}
    for node in model.graph.node:
        row = rows.setdefault(node.op_type, {"nodes": 0, "kinds": {}})
        row["nodes"] += 1
        row["kinds"][kinds[node.name]] = row["kinds"].get(kinds[node.name], 0) + 1
        sim = rtl.get("nodes", {}).get(node.name, {})
        if "identical" in sim:
            row["verilator_identical"] = row.get("verilator_identical", 0) + int(sim["identical"])
            row["cycles_per_image"] = max(row.get("cycles_per_image", 0), sim["cycles_per_image"])
    for row in rows.values():
        ks = row.pop("kinds")
        row["ran_as"] = next(iter(ks)) if len(ks) == 1 else "; ".join(f"{k} x{c}" for k, c in ks.items())
    return rows


def print_cppsim(info: dict, console: Console) -> None:
    if "skipped" in info:
        console.print(info["skipped"])
        return
    table = Table(title=f"--sim {info['images']}: what ran as what (every tensor compared with the functional model)")
    rtl = any("verilator_identical" in r for r in info["node_types"].values())
    cols = ("node type", "nodes", "ran as") + (("Verilator = functional", "cycles/image (Verilator)") if rtl else ())
    for col in cols:
        table.add_column(col, justify="left" if col in ("node type", "ran as") else "right")
    for op, r in info["node_types"].items():
        same = f"{r['verilator_identical']}/{r['nodes']}" if "verilator_identical" in r else ""
        cycles = f"{r['cycles_per_image']:,.0f}" if "cycles_per_image" in r else ""
        table.add_row(op, str(r["nodes"]), r["ran_as"], *((same, cycles) if rtl else ()))
    console.print(table)
    console.print(f"cppsim sources: {info['sources']}; the project's stand-ins: {', '.join(info['stand_ins'])}.")
    _print_verilator(info.get("verilator", {}), console)
    if info.get("shim_warnings"):
        console.print(f"[red]cppsim: the hls::stream shim reported {len(info['shim_warnings'])} problem(s), "
                      f"e.g. {info['shim_warnings'][0]}[/]")
    if info["all_tensors_identical"]:
        console.print(f"[green]cppsim: all {info['tensors_compared']} tensors identical to the functional model "
                      f"on {info['images']} images.[/]")
    else:
        console.print(f"[red]cppsim: tensors differing from the functional model: {info['tensors_differing']}; "
                      f"HLS nodes whose binary did not run: {info['hls_nodes_not_run']}.[/]")


def _print_verilator(rtl: dict, console: Console) -> None:
    if "skipped" in rtl:
        console.print(rtl["skipped"])
        return
    if not rtl:
        return
    console.print(f"Verilator ({rtl['verilator']}) ran each RTL node on its own, on the functional model's "
                  f"activations (inside the cppsim graph RTL nodes run as FINN's Python models).")
    if rtl["failed"] or rtl["tensors_differing"]:
        console.print(f"[red]Verilator: differing tensors {rtl['tensors_differing']}; failed {rtl['failed']}.[/]")
    else:
        console.print(f"[green]Verilator: all {rtl['tensors_compared']} RTL output tensors identical to the "
                      f"functional model.[/]")
