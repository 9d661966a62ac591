"""Exact numpy kernels of the functional model, and the datatype check every tensor goes through."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from bnnflow import compat

compat.finn_ready()

from qonnx.core.datatype import DataType  # noqa: E402
from qonnx.custom_op.general.im2col import compute_conv_output_dim  # noqa: E402


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
