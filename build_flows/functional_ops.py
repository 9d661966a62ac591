"""What each op computes, batched: standard ONNX, qonnx custom ops, and FINN's HW ops (their
*_hls / *_rtl variants through the generic op). Each function takes the node (functional._Node)
and its input arrays and returns its output(s) in FINN's shapes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from bnnflow import compat

compat.finn_ready()

from qonnx.core.datatype import DataType  # noqa: E402
from qonnx.core.onnx_exec import execute_node as _qonnx_execute_node  # noqa: E402

from .functional_kernels import (check_datatype, exact_matmul, im2col_nhwc, maxpool_nhwc,  # noqa: E402
                                 multithreshold, shift_right, topk_indices, window_sum_nhwc, xnor_popcount)


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
    # StreamingDataflowPartition / GenericPartition: added by functional.py (they run a child model)
}


def semantics_of(n) -> Callable:
    """The function computing node `n` (a functional._Node)."""
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
