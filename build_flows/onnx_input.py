"""A user's network given as a QONNX file (exported by Brevitas' export_qonnx), instead of Python.

The build takes the file as its `model.qonnx.onnx` (with one scalar Mul by 1/255 in front for a
network trained on 0..1 pixels, --input-scale unit) and keeps the file as given in
`model.source.onnx`: there is no Brevitas module to run, so verify's reference is that graph,
executed by qonnx (execute_onnx's node-by-node execution) in float64 where onnxruntime has
float64 kernels; Conv, which it lacks, runs in float64 in PyTorch. Every problem with the file
is one sentence.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from bnnflow.atomic import atomic_path
from bnnflow.digest import file_sha256
from bnnflow.errors import BnnflowError
from bnnflow.images import CHANNELS, IMAGE_SIZE
from bnnflow.model_ref import input_affine, shown

MAX_CHANNELS = 4  # grey, RGB or RGBA pixels
SOURCE_FILE = "model.source.onnx"  # the user's QONNX file as given: verify's reference
QONNX_OPS = ("Quant", "BipolarQuant", "Trunc")  # what Brevitas' export_qonnx writes for its quantizers
FINN_OPS = ("MultiThreshold",)  # a graph already streamlined by FINN
EXPORT_HINT = "export it from the Brevitas network with brevitas.export.export_qonnx(net, input_t, path)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.rstrip(".")[:160]


def graph_inputs(model) -> list:
    """The real inputs: the legacy exporter also lists every initializer as a graph input."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def load_user_onnx(path: Path, step: float = 1.0):
    """The user's QONNX file as a shape-annotated ModelWrapper; one sentence if it is not a QONNX network
    that takes a 3 x 32 x 32 image and returns logits."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    path = Path(path)
    name = shown(path)
    if not path.is_file():
        raise BnnflowError(f"QONNX file {name} does not exist: name an existing .onnx file ({EXPORT_HINT}).")
    try:
        proto = onnx.load(str(path))
        if not proto.graph.node:
            raise ValueError("the graph has no nodes")
    except Exception as exc:
        raise BnnflowError(f"{name} is not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)}): "
                           f"{EXPORT_HINT}.") from None
    ops = {n.op_type for n in proto.graph.node}
    if ops & set(FINN_OPS):
        raise BnnflowError(f"{name} is already a FINN graph (it has MultiThreshold nodes): give bnnflow the QONNX "
                           f"file Brevitas exported, before any FINN transformation.")
    if not ops & set(QONNX_OPS):
        raise BnnflowError(f"{name} has no QONNX quantizer nodes ({', '.join(QONNX_OPS)}), so it is a float ONNX "
                           f"model, not a quantized network: {EXPORT_HINT}.")
    try:
        model = ModelWrapper(proto).transform(InferShapes())
    except Exception as exc:
        raise BnnflowError(f"qonnx cannot infer the tensor shapes of {name} ({type(exc).__name__}: "
                           f"{_first_line(exc)}): {EXPORT_HINT}.") from None
    inputs, outputs = graph_inputs(model), list(model.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise BnnflowError(f"{name} has {len(inputs)} inputs and {len(outputs)} outputs: bnnflow builds networks "
                           "with one image input and one output of logits.")
    shape = tuple(model.get_tensor_shape(inputs[0].name) or ())
    if len(shape) != 4 or min(shape[1:]) < 1 or shape[1] > MAX_CHANNELS:
        raise BnnflowError(f"{name} takes an input of shape {'x'.join(map(str, shape)) or 'unknown'}, but bnnflow "
                           f"feeds images as N x C x H x W (C at most {MAX_CHANNELS}): export it with input_t of "
                           f"shape (1, C, H, W), like (1, {CHANNELS}, {IMAGE_SIZE}, {IMAGE_SIZE}) for CIFAR-10.")
    try:
        out = run_graph(model, np.zeros((1, *shape[1:]), dtype=np.float32) * step)
    except Exception as exc:
        raise BnnflowError(f"qonnx cannot execute {name} ({type(exc).__name__}: {_first_line(exc)}): "
                           f"{EXPORT_HINT}.") from None
    if out.ndim != 2:
        raise BnnflowError(f"{name} returns a tensor of shape {'x'.join(map(str, out.shape))}, not N x classes "
                           "logits: end the network in its classifier.")
    return model


def weight_summary(model) -> dict:
    """Binary weights and the bits of all quantized weights, from the quantizers fed by an initializer."""
    binary, other_bits = 0, 0
    for node in model.graph.node:
        w = model.get_initializer(node.input[0]) if node.op_type in ("Quant", "BipolarQuant") else None
        if w is None or w.size < 2:
            continue
        bits = 1 if node.op_type == "BipolarQuant" else model.get_initializer(node.input[3])
        bits = int(np.asarray(bits).reshape(-1)[0]) if bits is not None else 32
        if bits == 1:
            binary += w.size
        else:
            other_bits += w.size * bits
    return {"binary_weights": int(binary), "binary_mbit": binary / 1e6, "total_mbit": (binary + other_bits) / 1e6}


def with_pixel_input(model, step: float, mean=None, std=None):
    """The graph fed raw pixels: x * step (one scalar Mul, what Brevitas exports for bnnflow's own pixel wrapper),
    or (x * step - mean) / std per channel (a Mul and an Add by 1 x C x 1 x 1 constants), in front of every
    consumer of the input, so streamlining can fold it into the first thresholds."""
    from onnx import TensorProto, helper

    if step == 1.0 and mean is None:
        return model
    graph = model.graph
    inp = graph_inputs(model)[0].name
    shape = model.get_tensor_shape(inp)
    consumers = [n for n in graph.node if inp in n.input]
    if mean is None:
        mul, add = np.asarray(step, dtype=np.float32), None
    else:
        m, s = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        mul = (step / s).astype(np.float32).reshape(1, -1, 1, 1)
        add = (-m / s).astype(np.float32).reshape(1, -1, 1, 1)
    nodes, cur = [], inp
    for op, const in (("Mul", mul), ("Add", add)):
        if const is None:
            continue
        name, out = model.make_new_valueinfo_name(), model.make_new_valueinfo_name()
        model.set_initializer(name, const)
        nodes.append(helper.make_node(op, [cur, name], [out], name=f"bnnflow_pixel_{op.lower()}"))
        model.set_tensor_shape(out, shape, TensorProto.FLOAT)
        cur = out
    for node in consumers:
        for i, name in enumerate(node.input):
            if name == inp:
                node.input[i] = cur
    for k, node in enumerate(nodes):
        graph.node.insert(k, node)
    return model


def check_user_onnx(source: Path, input_scale: str | None):
    """The user's file, checked (load_user_onnx) together with the input description it is built with."""
    step, mean, _ = input_affine(input_scale)
    model = load_user_onnx(source, step)
    channels = model.get_tensor_shape(graph_inputs(model)[0].name)[1]
    if mean is not None and len(mean) not in (1, channels):
        raise BnnflowError(f"--input-mean and --input-std have {len(mean)} numbers, but {shown(source)} takes "
                           f"{channels}-channel images: give {channels} (or one for all channels).")
    return model


def import_onnx(source: Path, out: Path, qonnx_file: str, input_scale: str) -> dict:
    """Take the user's file into the build folder (as given, and as the flow's input); the build state's
    record of where the network and its weights come from."""
    step, mean, std = input_affine(input_scale)
    model = check_user_onnx(source, input_scale)
    with atomic_path(out / SOURCE_FILE) as tmp:
        shutil.copyfile(source, tmp)
    flow_input = with_pixel_input(load_user_onnx(source, step), step, mean, std)
    with atomic_path(out / qonnx_file) as tmp:
        flow_input.save(str(tmp))
    sha = file_sha256(source)
    return {"checkpoint": str(Path(source).resolve()), "checkpoint_sha256": sha, "accuracy": None,
            "weights_from": "QONNX file", "user_onnx": {"file": str(Path(source).resolve()), "sha256": sha,
                                                         "input_scale": input_scale},
            "tie_guard": {"skipped": [{"module": "-", "why": "a QONNX file has no Brevitas modules to adjust"}]},
            "weights": weight_summary(model)}


# ------------------------------------------------------------------ execution (verify's reference)


def _conv_float64(node, ctx) -> np.ndarray:
    """ONNX Conv (2-D, explicit pads) in float64 with PyTorch: onnxruntime's Conv is float32 only."""
    import torch
    import torch.nn.functional as F
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotImplementedError("Conv with auto_pad")
    x = torch.from_numpy(np.asarray(ctx[node.input[0]], dtype=np.float64))
    w = torch.from_numpy(np.asarray(ctx[node.input[1]], dtype=np.float64))
    if x.ndim != 4:
        raise NotImplementedError("Conv that is not 2-D")
    b = torch.from_numpy(np.asarray(ctx[node.input[2]], dtype=np.float64)) if len(node.input) > 2 and \
        node.input[2] else None
    t, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    x = F.pad(x, (left, right, t, bottom))
    y = F.conv2d(x, w, b, stride=tuple(attrs.get("strides", [1, 1])), dilation=tuple(attrs.get("dilations", [1, 1])),
                 groups=attrs.get("group", 1))
    return y.numpy()


def _as_float64(model):
    """A copy of the graph with every float32 tensor, constant and cast in float64."""
    from onnx import TensorProto, numpy_helper

    proto = type(model.model)()
    proto.CopyFrom(model.model)
    g = proto.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for node in g.node:
        for a in node.attribute:
            if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
            if a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(proto)


def _execute_float64(model, x: np.ndarray) -> np.ndarray:
    """qonnx's node-by-node execution of a float64 graph, Conv in PyTorch (qonnx.core.onnx_exec.execute_node
    for every other node, custom QONNX ops included)."""
    from qonnx.core.onnx_exec import execute_node
    from qonnx.util.basic import get_preferred_qonnx_opset

    ctx = model.make_empty_exec_context()
    ctx[graph_inputs(model)[0].name] = x.astype(np.float64)
    opsets = model.get_opset_imports()
    for node in model.graph.node:
        if node.op_type == "Conv" and node.domain == "":
            ctx[node.output[0]] = _conv_float64(node, ctx)
        else:
            execute_node(node, ctx, model.graph, opsets.get(node.domain, get_preferred_qonnx_opset()))
    out = ctx[model.graph.output[0].name]
    if out.dtype != np.float64:
        raise TypeError(f"output is {out.dtype}")
    return out


def run_graph(model, x: np.ndarray, double: bool = False) -> np.ndarray:
    """Logits (N x classes) of a QONNX graph on N x C x H x W inputs, at the graph's batch size N."""
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    m = model.transform(ChangeBatchSize(len(x))).transform(InferShapes())
    if double:
        return _execute_float64(_as_float64(m), x).reshape(len(x), -1)
    out = execute_onnx(m, {graph_inputs(m)[0].name: x.astype(np.float32)})
    return np.asarray(out[m.graph.output[0].name]).reshape(len(x), -1)


def network_input(x_nchw: np.ndarray, input_scale: str | None) -> np.ndarray:
    """Raw pixels as the network was trained on them, in float64: x * step, then (x - mean) / std."""
    step, mean, std = input_affine(input_scale)
    x = x_nchw.astype(np.float64) * step
    if mean is not None:
        shape = (1, -1, 1, 1)
        x = (x - np.asarray(mean, np.float64).reshape(shape)) / np.asarray(std, np.float64).reshape(shape)
    return x


def run_reference(path: Path, x_nchw: np.ndarray, input_scale: str | None, batch: int = 100) -> tuple[np.ndarray, str]:
    """The user's QONNX graph on raw pixels as it was trained on them (--input-scale, --input-mean/--input-std):
    (logits, 'float64' or 'float32 (why)')."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    model = ModelWrapper(str(path)).transform(InferShapes())
    x = network_input(x_nchw, input_scale)
    chunks = [x[i:i + batch] for i in range(0, len(x), batch)]
    try:
        return np.concatenate([run_graph(model, c, double=True) for c in chunks]), "float64"
    except Exception as exc:  # an op without a float64 kernel: the whole reference in float32, and said so
        logits = np.concatenate([run_graph(model, c.astype(np.float32)) for c in chunks])
        return logits, f"float32 (no float64 execution: {_first_line(exc)[:80]})"


def check_onnx_request(req) -> None:
    """What a QONNX file cannot take: weights and factory arguments are in the file."""
    if req.checkpoint is not None:
        raise BnnflowError(f"{shown(req.model)} holds its weights: drop --checkpoint (export the trained network to "
                           "QONNX instead).")
    if req.model_args is not None:
        raise BnnflowError("--model-args is for a network named as a Python factory: a QONNX file is built as "
                           "exported.")
    if not (req.resume or req.from_step):  # a new build: the file is checked before anything is written
        check_user_onnx(Path(req.model), req.input_scale)


def onnx_build(out_dir: Path) -> dict | None:
    """The record of the user's QONNX file when this build was made from one, else None."""
    import json

    from . import flow

    try:
        state = json.loads((Path(out_dir) / flow.STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    record = state.get("user_onnx") if isinstance(state, dict) else None
    return record if isinstance(record, dict) and (Path(out_dir) / SOURCE_FILE).is_file() else None


def reference_stages(out_dir: Path, net, x_nchw: np.ndarray) -> list[tuple[str, object]]:
    """verify's reference stages, first the one every other stage is compared with: Brevitas in float64 and
    float32 for a network built from Python; the user's QONNX file, as given, for one built from a file."""
    from .verify import run_brevitas

    record = onnx_build(out_dir) if net is None else None
    if record is None:
        return [("Brevitas (PyTorch, float64)", lambda: run_brevitas(net, x_nchw)),
                ("Brevitas (PyTorch, float32)", lambda: run_brevitas(net, x_nchw, double=False))]
    path, scale = Path(out_dir) / SOURCE_FILE, record.get("input_scale")
    _, precision = run_reference(path, x_nchw[:1], scale)  # one image tells which precision the graph runs in
    return [(f"QONNX file as given (qonnx exec, {precision})", lambda: run_reference(path, x_nchw, scale)[0])]


def reference_graph(out_dir: Path, stages, x_nchw: np.ndarray) -> dict:
    """{reference stage name: (the user's QONNX file, its input)} for verify to look inside; {} for Brevitas."""
    record = onnx_build(out_dir)
    if record is None:
        return {}
    name = next(s.name for s in stages if s.name.startswith("QONNX file as given"))
    return {name: (Path(out_dir) / SOURCE_FILE, network_input(x_nchw, record.get("input_scale")))}


def reference_name(out_dir: Path) -> str:
    """What verify's table compares with."""
    return "your QONNX file (qonnx execution)" if onnx_build(out_dir) else "Brevitas"


def network_io(out_dir: Path) -> tuple[tuple[int, int, int], int]:
    """(H, W, C) of the images a build's network takes, and its number of classes, from its QONNX file."""
    import onnx

    from . import flow

    model = onnx.load(str(Path(out_dir) / flow.QONNX_FILE), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    dims = lambda vi: [d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    _, c, h, w = dims(next(i for i in model.graph.input if i.name not in inits))
    return (h, w, c), int(np.prod(dims(model.graph.output[0])[1:]))
