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
from bnnflow.images import nchw_float, nhwc

from . import flow
from .steps import LOGIT_AFFINE_KEY
from .verify_sim import CPPSIM_STAGE, logits_tensor, print_cppsim, run_cppsim_stage  # noqa: F401 - re-exported

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


def run_finn_graph(model, x: np.ndarray) -> np.ndarray:
    from .functional import execute_graph

    name = logits_tensor(model)
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
    x = nhwc(x_nchw) if tuple(shape[1:]) == x_nchw.shape[2:] + x_nchw.shape[1:2] else x_nchw  # NHWC input
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

    from .onnx_input import reference_graph, reference_name, reference_stages
    from .verify_locate import locate, stage_graphs

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

    for name, fn in reference_stages(out_dir, net, x):  # Brevitas, or the user's QONNX file
        timed(name, fn, True)
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
        sim_out, sim_info = run_cppsim_stage(out_dir, child, xf[:sim], console)
        if sim_out is not None:
            sim_stage = StageResult(CPPSIM_STAGE, seconds=sim_out["seconds"], note=sim_out["note"])
            sim_stage.logits = sim_out["logits"]
            sim_stage.top1 = np.argmax(sim_stage.logits, axis=1)
            sim_stage.identical, sim_stage.same_top1 = agreement(sim_stage.logits, ref.logits[:sim])
            stages.append(sim_stage)
    informative = {"Brevitas (PyTorch, float32)"}  # what users run; float32 ties are not FINN's doing
    graphs = stage_graphs(out_dir, {"streamlined FINN graph": (streamlined, x), "HW-layer graph": (hw, x),
                                    "specialised + folded graph": (child, xf)},
                          {"QONNX (qonnx exec)": (out_dir / flow.QONNX_FILE, x), **reference_graph(out_dir, stages, x)},
                          {"Brevitas (PyTorch, float64)": (net, x)})

    def images(s: StageResult) -> int:
        return len(s.logits)

    result = {
        "images": n,
        "reference": reference_name(out_dir),
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
    if not result["all_identical"]:  # which stage, which tensor, by how much
        result["first_difference"] = locate(stages, ref, graphs, informative, result["reference"])
    if labels is not None:
        result["brevitas_top1_accuracy"] = float(np.mean(ref.top1 == labels[:n]))
        result["hardware_top1_accuracy"] = float(np.mean(folded.top1 == labels[:n]))
    return result


def print_verify(result: dict, console: Console) -> None:
    n = result["images"]
    ref = result.get("reference", "Brevitas")
    table = Table(title=f"Bit-exactness on {n} {result.get('image_source', 'CIFAR-10 test images')} "
                        f"(reference: {ref})")
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
        console.print(f"Top-1 accuracy on these images: {ref} {result['brevitas_top1_accuracy']:.1%}, "
                      f"hardware graph {result['hardware_top1_accuracy']:.1%}.")
    console.print(result["cppsim_rtlsim"])
    if result["all_identical"]:
        console.print(f"[green]Every stage is identical to {ref} on all {n} images.[/]")
    else:
        from .verify_locate import describe

        found = result.get("first_difference")
        console.print(f"[red]{describe(found) if found else f'Some stage differs from {ref}: see the table.'}[/]")
