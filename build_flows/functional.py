"""A fast, batched functional model of streamlined and dataflow (HW) FINN graphs.

FINN executes its graphs node by node for one image at a time, and cannot execute
HLS/RTL-specialised nodes without Vivado. This module runs a whole graph on a batch of
images in numpy, following the python `execute_node` of each FINN/qonnx op exactly
(specialised `*_hls`/`*_rtl` nodes through the semantics of their generic op), and checks
every produced value against the FINN datatype annotated on its tensor. Together this
proves bit-exactness on many real images and catches bit widths minimised too far.

Values are computed exactly (float64, or float32/int64 where that is exact) and stored as
float32 only once checked against an integer datatype of at most 24 bits.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from bnnflow import compat

compat.finn_ready()

from qonnx.core.datatype import DataType  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.custom_op.registry import getCustomOp, is_custom_op  # noqa: E402
from qonnx.util.basic import get_preferred_onnx_opset  # noqa: E402

from .functional_kernels import DatatypeOverflow, check_datatype  # noqa: E402,F401  (re-exported)
from .functional_ops import OPS, semantics_of  # noqa: E402

__all__ = ["DatatypeOverflow", "FunctionalModel", "execute_graph"]


class _Node:
    """One graph node with what its semantics function needs."""

    def __init__(self, model: ModelWrapper, proto):
        self.proto, self.name = proto, proto.name or proto.output[0]
        self.op, _, self.variant = proto.op_type.rpartition("_")  # "MVAU_hls" -> ("MVAU", "hls")
        if self.variant not in ("hls", "rtl"):
            self.op, self.variant = proto.op_type, ""
        self.inst = getCustomOp(proto) if is_custom_op(proto.domain, proto.op_type) else None
        self.in_dts = [model.get_tensor_datatype(t) if t else None for t in proto.input]
        self.out_shapes = [tuple(model.get_tensor_shape(t) or ()) for t in proto.output]
        # every tensor is checked against its datatype, so an integer one holds integers
        self.integer_input = True if self.in_dts and self.in_dts[0] and self.in_dts[0].is_integer() else None

    def attr(self, name, default=None):
        if self.inst is not None:
            return self.inst.get_nodeattr(name)
        for a in self.proto.attribute:
            if a.name == name:
                v = helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default

    def dt(self, attr: str) -> DataType:
        return DataType[self.attr(attr)]

    def batched(self, a: np.ndarray, shape) -> np.ndarray:
        """Reshape to `shape` (a FINN batch-1 shape) with the batch in front."""
        if shape[0] != 1:
            raise self.fail(f"shape {tuple(shape)} does not start with batch 1")
        return a.reshape((a.shape[0],) + tuple(shape[1:]))

    def out(self, a: np.ndarray, i: int = 0) -> np.ndarray:
        return self.batched(a, self.out_shapes[i])

    def fail(self, what: str):
        return NotImplementedError(f"functional model: {self.proto.op_type} node {self.name}: {what}")


def _partition(n, x):
    """StreamingDataflowPartition / GenericPartition: run the child model."""
    if not hasattr(n, "child"):
        n.child = FunctionalModel(ModelWrapper(n.attr("model")))
    out = n.child(x, batch_size=len(x))
    return tuple(out[t] for t in n.child.outputs)


OPS.update({"StreamingDataflowPartition": _partition, "GenericPartition": _partition})


# ---------------------------------------------------------------- the executor


# ops whose outputs only hold (some of) their inputs' values, plus their padding
_MOVES = {
    "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Concat", "Im2Col",
    "MaxPool", "MaxPoolNHWC", "ConvolutionInputGenerator", "FMPadding", "DuplicateStreams",
    "StreamingConcat", "StreamingMaxPool", "StreamingDataWidthConverter", "StreamingFIFO",
    "TLastMarker", "IODMA",
}


def _compact(a: np.ndarray, dt: DataType) -> np.ndarray:
    """Store checked values of an integer datatype of <= 24 bits as float32: exact, and half
    the memory traffic (and float32 BLAS) for the next op."""
    if a.dtype == np.float64 and dt.is_integer() and dt.bitwidth() <= 24:
        return a.astype(np.float32)
    return a


class FunctionalModel:
    """A graph prepared for repeated batched execution (see execute_graph).

    Construction resolves every node's semantics (unsupported ops fail here, named) and checks
    the initializers and HW weights/thresholds against their datatypes.
    """

    def __init__(self, model: ModelWrapper):
        self.model = model
        graph = model.graph
        self.consts = {t.name: model.get_initializer(t.name) for t in graph.initializer}
        for name, value in self.consts.items():
            check_datatype("<initializer>", name, model.get_tensor_datatype(name), np.asarray(value))
        inputs = [t.name for t in graph.input if t.name not in self.consts]
        if len(inputs) != 1:
            raise ValueError(f"functional model: expected one graph input, found {inputs}")
        self.input = inputs[0]
        self.input_shape = tuple(model.get_tensor_shape(self.input))
        self.outputs = [t.name for t in graph.output]
        self.nodes, self.fns = [], []
        opset = next((o.version for o in model.model.opset_import if o.domain in ("", "ai.onnx")), None)
        opset = opset or get_preferred_onnx_opset()
        for proto in graph.node:
            n = _Node(model, proto)
            if proto.op_type == "Constant":
                self.consts[proto.output[0]] = numpy_helper.to_array(n.attr("value"))
                continue
            n.graph, n.consts, n.opset = graph, self.consts, opset
            n.out_dts = [model.get_tensor_datatype(t) for t in proto.output]
            n.verified = self._moves_checked_values(n)
            self.nodes.append(n)
            self.fns.append(semantics_of(n))
            # the weights/thresholds of HW layers must fit the datatype the hardware stores them in
            if n.inst is not None and "weightDataType" in n.inst.get_nodeattr_types() and len(proto.input) > 1:
                if proto.input[1] in self.consts:
                    check_datatype(n.name, proto.input[1], n.dt("weightDataType"), self.consts[proto.input[1]])
        self.last_use = {t: i for i, n in enumerate(self.nodes) for t in n.proto.input}

    def _moves_checked_values(self, n: _Node) -> bool:
        """True if n only moves values already checked against its output datatype(s)."""
        if n.op not in _MOVES:
            return False
        data = len(n.proto.input) if n.op in ("Concat", "StreamingConcat") else 1  # not shapes, K, ...
        dts = set(n.in_dts[:data]) | set(n.out_dts)
        if n.op == "Im2Col" and any(n.attr("pad_amount")):
            return len(dts) == 1 and n.out_dts[0].allowed(n.attr("pad_value"))
        if n.op == "FMPadding":
            return len(dts) == 1 and n.out_dts[0].allowed(0)
        return len(dts) == 1

    def __call__(self, x: np.ndarray, tensors: list[str] | None = None, batch_size: int = 64) -> dict[str, np.ndarray]:
        x = np.asarray(x, dtype=np.float64)
        dt = self.model.get_tensor_datatype(self.input)
        if len(x) == 0 or x.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"input of shape {x.shape} does not match the graph input {self.input_shape}")
        check_datatype("<graph input>", self.input, dt, x)
        x = _compact(x, dt)
        wanted = list(dict.fromkeys(self.outputs + list(tensors or [])))
        chunks = [self._run(x[i : i + batch_size], wanted) for i in range(0, len(x), batch_size)]
        out = {t: np.concatenate([c[t] for c in chunks]) for t in wanted}
        return {t: a.astype(np.float64) if a.dtype == np.float32 else a for t, a in out.items()}

    def _run(self, x: np.ndarray, wanted: list[str]) -> dict[str, np.ndarray]:
        values = {self.input: x}
        for i, (n, fn) in enumerate(zip(self.nodes, self.fns)):
            try:
                ins = [values[t] if t in values else self.consts[t] for t in n.proto.input if t]
            except KeyError as e:
                raise ValueError(f"node {n.name}: input {e} is not computed yet (graph not sorted?)") from None
            outs = fn(n, *ins)
            outs = outs if isinstance(outs, tuple) else (outs,)
            for t, dt, a in zip(n.proto.output, n.out_dts, outs):
                if not n.verified:
                    check_datatype(n.name, t, dt, a)
                values[t] = _compact(a, dt)
            for t in n.proto.input:
                if self.last_use[t] == i and t not in wanted:
                    values.pop(t, None)
        missing = [t for t in wanted if t not in values]
        if missing:
            raise KeyError(f"tensors {missing} are not computed by the graph")
        return {t: values[t] for t in wanted}


def execute_graph(
    model: ModelWrapper, x: np.ndarray, tensors: list[str] | None = None, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Run `model` on the batch `x` (first axis: images; the rest: the graph input's shape).

    Returns the graph outputs and the requested intermediate `tensors`, each with the batch
    first, computed `batch_size` images at a time. Raises DatatypeOverflow when a value does
    not fit its annotated FINN datatype (or an MVAU/Pool accumulator its accumulator type).
    """
    return FunctionalModel(model)(x, tensors, batch_size)
