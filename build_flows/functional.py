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

import warnings
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper, numpy_helper

from bnnflow import compat

compat.finn_ready()

from qonnx.core.datatype import DataType  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.core.onnx_exec import execute_node as _qonnx_execute_node  # noqa: E402
from qonnx.custom_op.general.im2col import compute_conv_output_dim  # noqa: E402
from qonnx.custom_op.registry import getCustomOp, is_custom_op  # noqa: E402
from qonnx.util.basic import get_preferred_onnx_opset  # noqa: E402

__all__ = ["DatatypeOverflow", "FunctionalModel", "execute_graph"]


class DatatypeOverflow(Exception):
    """A value does not fit the FINN datatype its tensor (or accumulator) is annotated with."""

    def __init__(self, node: str, tensor: str, datatype: str, vmin: float, vmax: float, why: str = ""):
        self.node, self.tensor, self.datatype, self.min, self.max = node, tensor, datatype, vmin, vmax
        super().__init__(
            f"node {node}: {tensor} holds values in [{vmin:g}, {vmax:g}]{why}, "
            f"which do not fit its datatype {datatype}"
        )


def check_datatype(node: str, tensor: str, dt: DataType, a: np.ndarray) -> None:
    """Raise DatatypeOverflow unless every value of `a` is allowed by `dt` (floats: anything)."""
    if a.size == 0 or not (dt.is_integer() or dt.is_fixed_point()):
        return
    lo, hi = float(a.min()), float(a.max())
    why = ""
    if lo < dt.min() or hi > dt.max():
        pass
    elif dt.is_integer() and not np.array_equal(a, np.round(a)):
        why = " (not all integers)"
    elif dt.is_fixed_point() and not np.array_equal(a, np.round(a / dt.scale_factor()) * dt.scale_factor()):
        why = " (not all multiples of the fixed-point step)"
    elif dt == DataType["BIPOLAR"] and np.any(a == 0):
        why = " (zeros in a bipolar tensor)"
    else:
        return
    raise DatatypeOverflow(node, tensor, dt.name, lo, hi, why)


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


# ---------------------------------------------------------------------------- helpers


def _absmax(a: np.ndarray) -> float:
    return max(-float(a.min()), float(a.max())) if a.size else 0.0


def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b, exact for integer operands: BLAS in float32 (float64) while every partial sum
    stays below 2**24 (2**53), int64 beyond."""
    bound = _absmax(a) * _absmax(b) * a.shape[-1]
    if bound >= 2**53:
        return np.matmul(np.asarray(a, np.int64), np.asarray(b, np.int64)).astype(np.float64)
    dtype = np.float32 if bound < 2**24 and a.dtype == np.float32 else np.float64
    a, b = np.asarray(a, dtype), np.asarray(b, dtype)
    if b.ndim == 2:  # one big GEMM instead of numpy's loop over the leading dims
        return (a.reshape(-1, a.shape[-1]) @ b).reshape(a.shape[:-1] + (b.shape[1],))
    return np.matmul(a, b)


def xnor_popcount(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Number of agreements of {0,1}-encoded bipolar x (..., K) and w (K, M).

    qonnx computes (bipolar(x) @ bipolar(w) + K) / 2 = 2 x.w - sum(x) - sum(w) + K, which
    is x @ (2w - 1) + K - sum(w): the same integers without rewriting the large x.
    """
    w = np.asarray(w, dtype=np.float64)
    acc = exact_matmul(x, 2.0 * w - 1.0)
    acc += (w.shape[0] - w.sum(axis=0)).astype(acc.dtype)  # small integers: exact in float32
    return acc


def multithreshold(v: np.ndarray, thresholds: np.ndarray, scale=1.0, bias=0.0, integer=None) -> np.ndarray:
    """scale * (number of thresholds t with v >= t) + bias, channels on the last axis.

    thresholds: (C, steps), or (1, steps) for thresholds shared by all channels.
    integer: whether v is known to hold integers (None: find out).
    """
    thr = np.asarray(thresholds, dtype=np.float64)
    c = v.shape[-1]
    if thr.shape[0] not in (1, c):
        raise ValueError(f"thresholds {thr.shape} do not match {c} channels")
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if integer is None:
        integer = np.array_equal(v, np.round(v))
    if integer and (hi - lo + 1) * thr.shape[0] <= 1 << 20:
        # integers in a small range: count once per possible value, then look the counts up
        grid = np.arange(lo, hi + 1)
        lut = np.zeros((thr.shape[0], len(grid)))
        for t in thr.T:
            lut += grid >= t[:, None]
        lut = scale * lut + bias
        if np.array_equal(lut.astype(np.float32), lut):
            lut = lut.astype(np.float32)
        idx = v.astype(np.intp)
        idx -= int(lo)
        if thr.shape[0] > 1:
            idx += np.arange(c) * len(grid)
        return lut.ravel()[idx]
    count = np.zeros(v.shape, dtype=np.float64)
    for t in thr.T:  # one step at a time: no (..., C, steps) temporary
        count += v >= t
    return scale * count + bias


def im2col_nhwc(x, kernel, stride, pads=(0, 0, 0, 0), pad_value=0.0, dilation=(1, 1)) -> np.ndarray:
    """qonnx Im2Col on NHWC: (N, OH, OW, kh*kw*C), kernel position outer, channel inner.

    pads: [H_begin, W_begin, H_end, W_end].
    """
    n, h, w, c = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    oh = compute_conv_output_dim(h, kh, sh, pads[0] + pads[2], dh)
    ow = compute_conv_output_dim(w, kw, sw, pads[1] + pads[3], dw)
    if any(pads):
        x = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3]), (0, 0)), constant_values=pad_value)
    win = sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(1, 2))
    win = win[:, : sh * (oh - 1) + 1 : sh, : sw * (ow - 1) + 1 : sw, :, ::dh, ::dw]  # (N, OH, OW, C, kh, kw)
    return np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(n, oh, ow, kh * kw * c)


def maxpool_nhwc(x, kernel, stride, pads=(0, 0, 0, 0), ceil_mode=0) -> np.ndarray:
    """ONNX MaxPool (onnxruntime's output size rule) on NHWC; pads as [H_b, W_b, H_e, W_e]."""
    dims = []
    for ax in range(2):
        size, k, s, pb, pe = x.shape[1 + ax], kernel[ax], stride[ax], pads[ax], pads[ax + 2]
        span = size + pb + pe - k
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= size + pb:  # the last window must start inside
            o -= 1
        dims.append((o, pb, max(pe, (o - 1) * s + k - size - pb)))
    (oh, pth, pbh), (ow, ptw, pbw) = dims
    xp = np.pad(x, ((0, 0), (pth, pbh), (ptw, pbw), (0, 0)), constant_values=-np.inf)
    out = np.full((x.shape[0], oh, ow, x.shape[3]), -np.inf)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            win = xp[:, i : i + stride[0] * (oh - 1) + 1 : stride[0], j : j + stride[1] * (ow - 1) + 1 : stride[1]]
            np.maximum(out, win, out=out)
    return out


def window_sum_nhwc(x, k: int, s: int) -> np.ndarray:
    """Sum over k x k windows with stride s, no padding (NHWC)."""
    n, h, w, c = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out = np.zeros((n, oh, ow, c))
    for i in range(k):
        for j in range(k):
            out += x[:, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s]
    return out


def shift_right(a: np.ndarray, bits: int) -> np.ndarray:
    """Arithmetic right shift of integer values (floor division by 2**bits, exact in float)."""
    return np.floor(a / float(1 << bits))


def topk_indices(x: np.ndarray, k: int, axis: int = -1, largest: bool = True) -> np.ndarray:
    """Indices of the k largest (smallest) values; ties go to the lower index like onnxruntime."""
    order = np.argsort(-x if largest else x, axis=axis, kind="stable")
    return np.take(order, np.arange(k), axis=axis)


# ------------------------------------------------------------- standard ONNX ops


def _transpose(n, x):
    perm = list(n.attr("perm", range(x.ndim)[::-1]))
    if perm[0] != 0:
        raise n.fail(f"perm {perm} moves the batch axis")
    return np.transpose(x, perm)


def _reshape(n, x, *_):
    """Reshape, Flatten, Squeeze, Unsqueeze: the annotated output shape with the batch in front."""
    return n.out(x)


def _identity(n, *xs):
    return xs[: len(n.proto.output)]


def _elementwise(fn: Callable) -> Callable:
    return lambda n, a, b: fn(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


def _matmul(n, a, b):
    return exact_matmul(a, b)


def _concat(n, *xs):
    axis = n.attr("axis")
    if axis == 0 or axis == -xs[0].ndim:
        raise n.fail("concatenation along the batch axis")
    return np.concatenate(xs, axis=axis)


def _topk(n, x, k):
    axis, largest = n.attr("axis", -1), bool(n.attr("largest", 1))
    if axis % x.ndim == 0:
        raise n.fail("TopK along the batch axis")
    idx = topk_indices(x, int(np.asarray(k).flatten()[0]), axis, largest)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


def _maxpool(n, x):
    if list(n.attr("dilations", [1, 1])) != [1, 1] or len(n.proto.output) > 1:
        raise n.fail("dilation or an indices output")
    y = maxpool_nhwc(x.transpose(0, 2, 3, 1), n.attr("kernel_shape"), n.attr("strides", [1, 1]),
                     n.attr("pads", [0, 0, 0, 0]), n.attr("ceil_mode", 0))
    return y.transpose(0, 3, 1, 2)


# ---------------------------------------------------------------- qonnx custom ops


def _multithreshold_op(n, v, thr):
    # the channel axis as qonnx's MultiThreshold.execute_node finds it
    layout = n.attr("data_layout")
    if not layout and v.ndim < 5:
        layout = {0: None, 1: None, 2: "NC", 3: "NWC", 4: "NCHW"}[v.ndim]
    cdim = layout.index("C") if layout and "C" in layout else 1
    y = multithreshold(np.moveaxis(v, cdim, -1), thr, n.attr("out_scale"), n.attr("out_bias"), n.integer_input)
    return np.moveaxis(y, -1, cdim)


def _xnor_popcount_op(n, x, w):
    return xnor_popcount(x, w)


def _im2col_op(n, x):
    return im2col_nhwc(x, n.attr("kernel_size"), n.attr("stride"), n.attr("pad_amount"),
                       n.attr("pad_value"), n.attr("dilations"))


def _quant_avg_pool_op(n, x):
    nhwc = n.attr("data_layout") == "NHWC"
    s = window_sum_nhwc(x if nhwc else x.transpose(0, 2, 3, 1), n.attr("kernel"), n.attr("stride"))
    y = shift_right(s, n.inst.get_shifts())
    return y if nhwc else y.transpose(0, 3, 1, 2)


def _maxpool_nhwc_op(n, x):
    return maxpool_nhwc(x, n.attr("kernel_shape"), n.attr("strides"), n.attr("pads"), n.attr("ceil_mode"))


def _elementwise_custom_op(n, *xs):
    """Trunc, Quant, BipolarQuant: qonnx's own execute_node works on any batch."""
    ctx = dict(zip(n.proto.input, xs))
    n.inst.execute_node(ctx, None)
    return np.asarray(ctx[n.proto.output[0]], dtype=np.float64)


# ---------------------------------------------------------------- FINN HW ops


def _mvau(n, x, w, thr=None):
    x = n.batched(x, n.inst.get_normal_input_shape(0))
    if n.attr("binaryXnorMode"):
        acc = xnor_popcount(x, w)
    elif n.attr("inputDataType") == "BIPOLAR" and n.attr("weightDataType") == "BIPOLAR":
        acc = xnor_popcount((x + 1) / 2, (np.asarray(w) + 1) / 2)
    else:
        acc = exact_matmul(x, w)
    check_datatype(n.name, "the accumulator", n.dt("accDataType"), acc)
    if n.attr("noActivation"):
        return n.out(acc)
    bipolar = n.attr("outputDataType") == "BIPOLAR"
    scale, bias = (2, -1) if bipolar else (1, n.attr("ActVal"))
    return n.out(multithreshold(acc, thr, scale, bias, n.dt("accDataType").is_integer() or None))


def _thresholding(n, x, thr):
    y = multithreshold(x, thr, 1.0, n.attr("ActVal"), n.integer_input)
    return 2 * y - 1 if n.attr("outputDataType") == "BIPOLAR" else y


def _conv_input_generator(n, x):
    y = im2col_nhwc(x, n.attr("ConvKernelDim"), n.attr("Stride"), dilation=n.attr("Dilation"))
    if n.variant == "rtl" and n.attr("depthwise"):
        # the RTL window generator interleaves the channels by its SIMD (FINN's cppsim does too)
        b, oh, ow, _ = y.shape
        simd, c = n.attr("SIMD"), n.attr("IFMChannels")
        y = y.reshape(b, oh, ow, -1, c // simd, simd).transpose(0, 1, 2, 4, 3, 5).reshape(b, oh, ow, -1)
    return n.out(y)


def _fmpadding(n, x):
    p = n.attr("Padding")  # [H_begin, W_begin, H_end, W_end], zeros
    return np.pad(x, ((0, 0), (p[0], p[2]), (p[1], p[3]), (0, 0)))


def _pool(n, x):
    k2, ch, fxn = int(np.prod(n.attr("KernelSize"))), n.attr("Channels"), n.attr("Function")
    b, *dims, _ = x.shape
    if n.variant == "hls":  # the HLS kernel reads (channel fold, kernel, PE), see Pool_hls
        pe = n.attr("PE")
        win = x.reshape(b, *dims, ch // pe, k2, pe).swapaxes(-3, -2).reshape(b, *dims, k2, ch)
    else:
        win = x.reshape(b, *dims, k2, ch)
    if fxn == "MaxPool":
        return n.out(win.max(axis=-2))
    if fxn == "AvgPool":
        return n.out(win.mean(axis=-2))
    acc = win.sum(axis=-2)
    if fxn == "AccPool":
        return n.out(acc)
    idt, odt = n.dt("InputDataType"), n.dt("OutputDataType")
    if n.attr("AccumBits"):
        acc_dt = DataType[f"{'' if idt.signed() else 'U'}INT{n.attr('AccumBits')}"]
        check_datatype(n.name, "the accumulator", acc_dt, acc)
    # FINN's python model derives the shift from the datatypes, the HLS kernel uses Size
    shift = max(0, int(((2 ** idt.bitwidth() - 1) * k2)).bit_length() - odt.bitwidth())
    if n.variant == "hls":
        if n.attr("Size") != shift:
            warnings.warn(f"{n.name}: Pool Size={n.attr('Size')} but the datatypes imply shift {shift}")
        shift = n.attr("Size")
    return n.out(shift_right(acc, shift))


def _global_acc_pool(n, x):
    return n.out(x.sum(axis=(1, 2)))


def _label_select(n, x):
    return n.out(topk_indices(x, n.attr("K")).astype(np.float64))


def _duplicate_streams(n, x):
    return (x,) * len(n.proto.output)


def _streaming_concat(n, *xs):
    return np.concatenate(xs, axis=-1)


def _elementwise_binary(n, a, b):
    op = n.inst.npy_op
    if op in (np.add, np.subtract, np.maximum, np.minimum):
        return op(a, b, dtype=np.float64)  # exact for these integers, and faster than int64
    # as ElementwiseBinaryOperation.execute_node: integers go through numpy in int64
    a = a.astype(np.int64) if n.dt("lhs_dtype").is_integer() else a
    b = np.asarray(b).astype(np.int64) if n.dt("rhs_dtype").is_integer() else b
    return np.asarray(op(a, b), dtype=np.float64)


def _streaming_maxpool(n, x):
    k = n.attr("PoolDim")
    return maxpool_nhwc(x, k, k, ceil_mode=n.attr("CeilMode"))


def _partition(n, x):
    """StreamingDataflowPartition / GenericPartition: run the child model."""
    if not hasattr(n, "child"):
        n.child = FunctionalModel(ModelWrapper(n.attr("model")))
    out = n.child(x, batch_size=len(x))
    return tuple(out[t] for t in n.child.outputs)


OPS: dict[str, Callable] = {
    # standard ONNX
    "Transpose": _transpose,
    "Reshape": _reshape,
    "Flatten": _reshape,
    "Squeeze": _reshape,
    "Unsqueeze": _reshape,
    "Identity": _identity,
    "Add": _elementwise(np.add),
    "Sub": _elementwise(np.subtract),
    "Mul": _elementwise(np.multiply),
    "Div": _elementwise(np.divide),
    "Max": _elementwise(np.maximum),
    "Min": _elementwise(np.minimum),
    "MatMul": _matmul,
    "Concat": _concat,
    "TopK": _topk,
    "MaxPool": _maxpool,
    # qonnx
    "MultiThreshold": _multithreshold_op,
    "XnorPopcountMatMul": _xnor_popcount_op,
    "Im2Col": _im2col_op,
    "QuantAvgPool2d": _quant_avg_pool_op,
    "MaxPoolNHWC": _maxpool_nhwc_op,
    "Trunc": _elementwise_custom_op,
    "Quant": _elementwise_custom_op,
    "BipolarQuant": _elementwise_custom_op,
    # FINN HW layers (also their _hls / _rtl specialisations)
    "MVAU": _mvau,
    "Thresholding": _thresholding,
    "ConvolutionInputGenerator": _conv_input_generator,
    "FMPadding": _fmpadding,
    "Pool": _pool,
    "GlobalAccPool": _global_acc_pool,
    "LabelSelect": _label_select,
    "DuplicateStreams": _duplicate_streams,
    "StreamingConcat": _streaming_concat,
    "StreamingMaxPool": _streaming_maxpool,
    "StreamingDataWidthConverter": _identity,
    "StreamingFIFO": _identity,
    "TLastMarker": _identity,
    "IODMA": _identity,
    "StreamingDataflowPartition": _partition,
    "GenericPartition": _partition,
}


def _semantics(n: _Node) -> Callable:
    if n.op in OPS:
        return OPS[n.op]
    if n.op.startswith("Elementwise") and hasattr(n.inst, "npy_op"):
        return _elementwise_binary
    if n.inst is None and n.proto.domain in ("", "ai.onnx"):
        return _per_image
    raise n.fail("the functional model has no semantics for this op")


def _per_image(n, *xs):
    """Fallback for other standard ONNX ops: qonnx's execute_node (onnxruntime), image by image."""
    xs = [x.astype(np.float32) if x.dtype == np.float64 else x for x in xs]  # FINN's container type
    outs = []
    for i in range(xs[0].shape[0]):
        ctx = {t: (x if t in n.consts else x[i : i + 1]) for t, x in zip(n.proto.input, xs)}
        ctx.update({t: np.zeros(s, np.float32) for t, s in zip(n.proto.output, n.out_shapes)})
        _qonnx_execute_node(n.proto, ctx, n.graph, n.opset)
        outs.append([ctx[t] for t in n.proto.output])
    return tuple(np.concatenate(o) for o in zip(*outs))


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
            self.fns.append(_semantics(n))
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
