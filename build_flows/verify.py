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

from bnnflow.atomic import write_json
from bnnflow.errors import BnnflowError

from . import flow
from .steps import LOGIT_AFFINE_KEY

STREAMLINED_STEP = "insert_topk"
HW_STEP = "minimize_bit_width_initial"
FOLDED_STEP = "generate_estimate_reports"
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
    x = x_nchw.transpose(0, 2, 3, 1) if list(shape[1:]) == [32, 32, 3] else x_nchw
    return child, x


def cppsim_rtlsim_note() -> str:
    hls = flow.tool_available(flow.VITIS_HLS)
    viv = flow.tool_available(flow.VIVADO)
    if hls and viv:
        return "cppsim/rtlsim: tools found; run 'bnnflow build' to the 'measure_rtlsim_performance' step for rtlsim."
    return ("cppsim and rtlsim were not run: cppsim needs Vitis HLS (ap_int headers) and finn-hlslib, rtlsim needs "
            "Vivado xsim, and neither is installed; the folded graph was checked by functional execution instead.")


def compare(stages: list[StageResult], ref: StageResult) -> None:
    for st in stages:
        if st.logits is None:
            continue
        st.identical = int(np.sum(np.all(st.logits == ref.logits, axis=1)))
        st.same_top1 = int(np.sum(st.top1 == ref.top1))


def verify_build(out_dir: Path, net, x_uint8: np.ndarray, labels: np.ndarray | None = None,
                 console: Console | None = None) -> dict:
    """Run all stages on images (N x 32 x 32 x 3 uint8) for the build in out_dir and net (its Brevitas model)."""
    from qonnx.core.modelwrapper import ModelWrapper

    console = console or Console()
    x = np.ascontiguousarray(x_uint8.transpose(0, 3, 1, 2)).astype(np.float32)
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
    ref = stages[0]
    compare(stages, ref)
    informative = {"Brevitas (PyTorch, float32)"}  # what users run; float32 ties are not FINN's doing
    result = {
        "images": n,
        "logit_affine": [a, b],
        "stages": [{"stage": s.name, "identical_integer_logits": s.identical, "same_top1": s.same_top1,
                    "images_per_second": n / max(s.seconds, 1e-9), "note": s.note, **s.extra} for s in stages],
        "all_identical": all(s.identical == n for s in stages if s.name not in informative),
        "cppsim_rtlsim": cppsim_rtlsim_note(),
    }
    if labels is not None:
        result["brevitas_top1_accuracy"] = float(np.mean(ref.top1 == labels[:n]))
        result["hardware_top1_accuracy"] = float(np.mean(stages[-1].top1 == labels[:n]))
    return result


def print_verify(result: dict, console: Console) -> None:
    n = result["images"]
    table = Table(title=f"Bit-exactness on {n} CIFAR-10 test images (reference: Brevitas)")
    for col in ("stage", "identical integer logits", "same top-1", "images/s", "note"):
        table.add_column(col, justify="left" if col in ("stage", "note") else "right")
    for s in result["stages"]:
        ok = "green" if s["identical_integer_logits"] == n else "red"
        table.add_row(s["stage"], f"[{ok}]{s['identical_integer_logits']}/{n}[/]", f"{s['same_top1']}/{n}",
                      f"{s['images_per_second']:.1f}", s["note"])
    console.print(table)
    if "brevitas_top1_accuracy" in result:
        console.print(f"Top-1 accuracy on these images: Brevitas {result['brevitas_top1_accuracy']:.1%}, "
                      f"hardware graph {result['hardware_top1_accuracy']:.1%}.")
    console.print(result["cppsim_rtlsim"])
    if result["all_identical"]:
        console.print(f"[green]Every stage is identical to Brevitas on all {n} images.[/]")
    else:
        console.print("[red]Some stage differs from Brevitas: see the table.[/]")


def run_verify(args, console: Console) -> int:
    from bnnflow.models.checkpoint import load_checkpoint
    from bnnflow.models.data import load_cifar10

    from .build import BREVITAS_FILE, BuildRequest, run_build

    if args.images < 1:
        raise BnnflowError("--images must be at least 1.")
    x, y = load_cifar10(args.data, "test", download=args.download)
    if args.images > len(x):
        raise BnnflowError(f"--images {args.images} is more than the {len(x)} test images available.")
    if args.build is not None:
        out = Path(args.build).resolve()
        state = flow.BuildState(out)
        if FOLDED_STEP not in state.done:
            raise BnnflowError(f"{out} is not a bnnflow build that reached '{FOLDED_STEP}': run 'bnnflow estimate' "
                               "or 'bnnflow build' first, or pass another --build.")
    else:
        req = BuildRequest(model=args.model, variant=args.variant, board=args.board, checkpoint=args.checkpoint,
                           out=args.out, resume=args.resume, from_step=args.from_step, stop_after=FOLDED_STEP,
                           force=args.force, target_fps=args.target_fps, folding=args.folding, seed=args.seed)
        out = run_build(req, console)["out"]
    net, _ = load_checkpoint(out / BREVITAS_FILE)
    result = verify_build(out, net, x[:args.images], y, console)
    write_json(out / "verify.json", result)
    print_verify(result, console)
    console.print(f"Report: {out / 'verify.json'}")
    return 0 if result["all_identical"] else 1
