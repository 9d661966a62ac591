"""The batched functional model (bnnflow.build_flows.functional) against FINN's own execution.

Every graph here is built in the test; FINN executes it one image at a time with the
python `execute_node` of its generic ops, the functional model on the whole batch.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from bnnflow import compat

compat.finn_ready()

from finn.core.onnx_exec import execute_onnx  # noqa: E402
from qonnx.core.datatype import DataType  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.util.basic import qonnx_make_model  # noqa: E402

from bnnflow.build_flows.functional import DatatypeOverflow, execute_graph  # noqa: E402

FINN = "finn.custom_op.fpgadataflow"
QONNX = "qonnx.custom_op.general"
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FOLD = st.integers(0, 2**16)  # picks a divisor: SIMD / PE > 1 where the dimension allows


def divisor(n: int, pick: int) -> int:
    """The folding factor `pick` chooses among the divisors of n (FINN's legality rule)."""
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return divs[pick % len(divs)]


def hw(op, inputs, outputs, **attrs):
    domain = FINN + {"": "", "hls": ".hls", "rtl": ".rtl"}[op.rpartition("_")[2] if "_" in op else ""]
    return helper.make_node(op, inputs, outputs, domain=domain, backend="fpgadataflow", **attrs)


def make_model(nodes, tensors: dict, inits: dict | None = None, int64=()) -> ModelWrapper:
    """tensors: name -> (batch-1 shape, FINN datatype name); the first is the graph input,
    the last the graph output; `int64` names the tensors onnx types as int64 (TopK indices)."""
    vi = {
        t: helper.make_tensor_value_info(t, TensorProto.INT64 if t in int64 else TensorProto.FLOAT, s)
        for t, (s, _) in tensors.items()
    }
    names = list(tensors)
    graph = helper.make_graph(nodes, "g", [vi[names[0]]], [vi[names[-1]]], value_info=[vi[t] for t in names[1:-1]])
    model = ModelWrapper(qonnx_make_model(graph, producer_name="test"))
    for t, (_, dt) in tensors.items():
        model.set_tensor_datatype(t, DataType[dt])
    for t, (value, dt) in (inits or {}).items():
        model.set_initializer(t, np.asarray(value, dtype=np.float32))
        model.set_tensor_datatype(t, DataType[dt])
    return model


def finn_per_image(model: ModelWrapper, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    ctxs = [
        execute_onnx(model, {model.graph.input[0].name: x[i : i + 1].astype(np.float32)}, True) for i in range(len(x))
    ]
    return {t: np.concatenate([c[t] for c in ctxs]) for t in names}


def assert_same_as_finn(model: ModelWrapper, x: np.ndarray, batch_size: int = 3):
    names = [o for n in model.graph.node for o in n.output]
    ours = execute_graph(model, x, tensors=names, batch_size=batch_size)
    ref = finn_per_image(model, x, names)
    for t in names:
        np.testing.assert_array_equal(ours[t], np.asarray(ref[t], np.float64).reshape(ours[t].shape), err_msg=t)
    return ours


def sorted_thresholds(rng, rows, steps, lo, hi):
    return np.sort(rng.integers(lo, hi + 1, size=(rows, steps)), axis=1)


# ------------------------------------------------------------------------------- MVAU


@FAST
@given(
    mw=st.integers(1, 40),
    mh=st.integers(1, 12),
    hw_=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    act_bits=st.sampled_from([0, 1, 2, 4]),
    signed=st.booleans(),
    n=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    simd=FOLD,
    pe=FOLD,
)
def test_mvau_xnor(mw, mh, hw_, act_bits, signed, n, seed, simd, pe):
    """XNOR-mode MVAU: popcount of agreements, then optional thresholds with ActVal."""
    rng = np.random.default_rng(seed)
    acc_dt = f"UINT{max(1, int(np.ceil(np.log2(mw + 1))))}"
    attrs = dict(MW=mw, MH=mh, SIMD=divisor(mw, simd), PE=divisor(mh, pe), inputDataType="BINARY",
                 weightDataType="BINARY",
                 accDataType=acc_dt, binaryXnorMode=1, numInputVectors=[1, *hw_])
    inits = {"w": (rng.integers(0, 2, (mw, mh)), "BINARY")}
    if act_bits:
        steps = 2**act_bits - 1
        act = -(2 ** (act_bits - 1)) if signed else 0
        out_dt = f"{'INT' if signed else 'UINT'}{act_bits}" if act_bits > 1 or not signed else "BIPOLAR"
        if out_dt == "BIPOLAR":
            act = 0
        inits["thr"] = (sorted_thresholds(rng, mh, steps, 0, mw + 1), "UINT32")
        node = hw("MVAU", ["x", "w", "thr"], ["y"], noActivation=0, ActVal=act, outputDataType=out_dt, **attrs)
    else:
        out_dt = acc_dt
        node = hw("MVAU", ["x", "w"], ["y"], noActivation=1, outputDataType=out_dt, **attrs)
    model = make_model([node], {"x": ([1, *hw_, mw], "BINARY"), "y": ([1, *hw_, mh], out_dt)}, inits)
    assert_same_as_finn(model, rng.integers(0, 2, (n, *hw_, mw)))


@FAST
@given(
    mw=st.integers(1, 30),
    mh=st.integers(1, 10),
    vecs=st.sampled_from([[1], [1, 3], [1, 2, 3]]),
    idt=st.sampled_from(["UINT8", "INT4", "BIPOLAR"]),
    thresholds=st.booleans(),
    seed=st.integers(0, 2**16),
    simd=FOLD,
    pe=FOLD,
)
def test_mvau_integer(mw, mh, vecs, idt, thresholds, seed, simd, pe):
    """Non-XNOR MVAU: integer matmul (BIPOLAR x BIPOLAR: FINN's popcount branch), thresholds."""
    # FINN's python MVAU thresholds a 3-D result along axis 1, not the channels: not comparable
    assume(not (thresholds and len(vecs) == 2))
    rng = np.random.default_rng(seed)
    dt = DataType[idt]
    wdt = "BIPOLAR" if idt == "BIPOLAR" else "INT4"
    w = rng.choice([-1, 1], (mw, mh)) if wdt == "BIPOLAR" else rng.integers(-8, 8, (mw, mh))
    x = rng.integers(dt.min(), dt.max() + 1, (4, *vecs[1:], mw))
    if idt == "BIPOLAR":
        x = 2 * rng.integers(0, 2, (4, *vecs[1:], mw)) - 1
    attrs = dict(MW=mw, MH=mh, SIMD=divisor(mw, simd), PE=divisor(mh, pe), inputDataType=idt, weightDataType=wdt,
                 accDataType="INT32",
                 binaryXnorMode=0, numInputVectors=vecs)
    inits = {"w": (w, wdt)}
    if thresholds:
        inits["thr"] = (sorted_thresholds(rng, mh, 3, -200, 200), "INT32")
        node = hw("MVAU", ["x", "w", "thr"], ["y"], noActivation=0, ActVal=-2, outputDataType="INT2", **attrs)
        out_dt = "INT2"
    else:
        node = hw("MVAU", ["x", "w"], ["y"], noActivation=1, outputDataType="INT32", **attrs)
        out_dt = "INT32"
    model = make_model([node], {"x": ([*vecs, mw], idt), "y": ([*vecs, mh], out_dt)}, inits)
    assert_same_as_finn(model, x)


# ------------------------------------------------------------------ Thresholding


@FAST
@given(
    c=st.integers(1, 8),
    steps=st.sampled_from([1, 3, 7]),
    shared=st.booleans(),
    act=st.sampled_from([0, -1]),
    seed=st.integers(0, 2**16),
    pe=FOLD,
)
def test_thresholding(c, steps, shared, act, seed, pe):
    rng = np.random.default_rng(seed)
    bits = int(np.log2(steps + 1))
    out_dt = ("INT" if act else "UINT") + str(bits + (1 if act else 0))
    thr = sorted_thresholds(rng, 1 if shared else c, steps, -20, 20)
    node = hw("Thresholding", ["x", "thr"], ["y"], NumChannels=c, PE=divisor(c, pe), numSteps=steps,
              inputDataType="INT8",
              weightDataType="INT8", outputDataType=out_dt, ActVal=act, numInputVectors=[1, 3, 2])
    model = make_model([node], {"x": ([1, 3, 2, c], "INT8"), "y": ([1, 3, 2, c], out_dt)}, {"thr": (thr, "INT8")})
    assert_same_as_finn(model, rng.integers(-25, 26, (5, 3, 2, c)))


def test_thresholding_bipolar_output():
    rng = np.random.default_rng(0)
    node = hw("Thresholding", ["x", "thr"], ["y"], NumChannels=4, PE=1, numSteps=1, inputDataType="INT4",
              weightDataType="INT4", outputDataType="BIPOLAR", numInputVectors=[1, 5])
    model = make_model([node], {"x": ([1, 5, 4], "INT4"), "y": ([1, 5, 4], "BIPOLAR")},
                       {"thr": (rng.integers(-3, 3, (4, 1)), "INT4")})
    ours = assert_same_as_finn(model, rng.integers(-8, 8, (6, 5, 4)))
    assert set(np.unique(ours["y"])) <= {-1.0, 1.0}


# ---------------------------------------------- padding, sliding windows, pooling


@FAST
@given(
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    pad=st.tuples(st.integers(0, 1), st.integers(0, 2), st.integers(0, 1), st.integers(0, 2)),
    c=st.integers(1, 4),
    depthwise=st.integers(0, 1),
    seed=st.integers(0, 2**16),
)
def test_fmpadding_conv_input_generator(k, stride, dilation, pad, c, depthwise, seed):
    rng = np.random.default_rng(seed)
    h, w = 6, 5
    ph, pw = h + pad[0] + pad[2], w + pad[1] + pad[3]
    oh, ow = (ph - dilation * (k - 1) - 1) // stride + 1, (pw - dilation * (k - 1) - 1) // stride + 1
    nodes = [
        hw("FMPadding", ["x"], ["p"], ImgDim=[h, w], Padding=list(pad), NumChannels=c, SIMD=c, inputDataType="INT4"),
        hw("ConvolutionInputGenerator", ["p"], ["y"], ConvKernelDim=[k, k], IFMChannels=c, IFMDim=[ph, pw],
           OFMDim=[oh, ow], SIMD=c, Stride=[stride, stride], Dilation=[dilation, dilation],
           inputDataType="INT4", outputDataType="INT4", depthwise=depthwise),
    ]
    tensors = {"x": ([1, h, w, c], "INT4"), "p": ([1, ph, pw, c], "INT4"), "y": ([1, oh, ow, k * k * c], "INT4")}
    assert_same_as_finn(make_model(nodes, tensors), rng.integers(-8, 8, (4, h, w, c)))


def pool_graph(c, k, fxn, simd, specialised=False, idt="INT4", odt="INT4"):
    """Sliding window (depthwise) -> Pool over 8x8 images, k x k windows with stride k."""
    o = 8 // k
    acc_bits = DataType.get_smallest_possible(k * k * DataType[idt].min()).bitwidth()
    swg, pool = ("ConvolutionInputGenerator_rtl", "Pool_hls") if specialised else ("ConvolutionInputGenerator", "Pool")
    shift = max(0, int((2 ** DataType[idt].bitwidth() - 1) * k * k).bit_length() - DataType[odt].bitwidth())
    nodes = [
        hw(swg, ["x"], ["win"], ConvKernelDim=[k, k], IFMChannels=c, IFMDim=[8, 8], OFMDim=[o, o], SIMD=simd,
           Stride=[k, k], Dilation=[1, 1], inputDataType=idt, outputDataType=idt, depthwise=1),
        hw(pool, ["win"], ["y"], Channels=c, PE=simd, KernelSize=[k, k], Function=fxn, OutImgDims=[o, o],
           InputDataType=idt, OutputDataType=odt if fxn == "QuantAvgPool" else idt,
           AccumBits=acc_bits if fxn == "QuantAvgPool" else 0, Size=shift),
    ]
    tensors = {
        "x": ([1, 8, 8, c], idt),
        "win": ([1, o, o, k * k * c], idt),
        "y": ([1, o, o, c], odt if fxn == "QuantAvgPool" else idt),
    }
    return make_model(nodes, tensors)


@FAST
@given(
    c=st.sampled_from([2, 4, 6]),
    k=st.sampled_from([2, 4, 8]),
    fxn=st.sampled_from(["MaxPool", "QuantAvgPool"]),
    odt=st.sampled_from(["INT4", "INT8"]),
    seed=st.integers(0, 2**16),
)
def test_pool_generic_and_specialised(c, k, fxn, odt, seed):
    """Generic Pool matches FINN; the specialised pair (channel-interleaving RTL window
    generator feeding Pool_hls with SIMD = PE < C) computes the same result."""
    x = np.random.default_rng(seed).integers(-8, 8, (5, 8, 8, c))
    generic = pool_graph(c, k, fxn, simd=c, odt=odt)
    ours = assert_same_as_finn(generic, x)
    for simd in (1, c // 2):
        spec = execute_graph(pool_graph(c, k, fxn, simd=simd, specialised=True, odt=odt), x)
        np.testing.assert_array_equal(spec["y"], ours["y"])


def test_pool_accumulator_overflow():
    model = pool_graph(2, 4, "QuantAvgPool", simd=2, odt="INT8")
    model.graph.node[1].attribute[[a.name for a in model.graph.node[1].attribute].index("AccumBits")].i = 5
    with pytest.raises(DatatypeOverflow, match="accumulator"):
        execute_graph(model, np.full((2, 8, 8, 2), -8))


# ------------------------------------------- residual adds, concatenation, labels


@FAST
@given(c=st.integers(1, 6), seed=st.integers(0, 2**16), pe=FOLD, simd=FOLD)
def test_duplicate_add_concat(c, seed, pe, simd):
    shape = [1, 3, 3, c]
    nodes = [
        hw("DuplicateStreams", ["x"], ["a", "b"], NumChannels=c, PE=divisor(c, pe), NumOutputStreams=2,
           inputDataType="INT4",
           numInputVectors=[1, 3, 3]),
        hw("ElementwiseAdd", ["a", "b"], ["s"], lhs_dtype="INT4", rhs_dtype="INT4", out_dtype="INT5",
           lhs_shape=shape, rhs_shape=shape, out_shape=shape),
        hw("StreamingConcat", ["s", "a"], ["y"], SIMD=divisor(c, simd), ChannelsPerStream=[c, c],
           inputDataTypes=["INT5", "INT4"],
           numInputVectors=[1, 3, 3]),
    ]
    tensors = {"x": (shape, "INT4"), "a": (shape, "INT4"), "b": (shape, "INT4"), "s": (shape, "INT5"),
               "y": ([1, 3, 3, 2 * c], "INT5")}
    assert_same_as_finn(make_model(nodes, tensors), np.random.default_rng(seed).integers(-8, 8, (4, 3, 3, c)))


@FAST
@given(labels=st.integers(2, 12), k=st.integers(1, 3), seed=st.integers(0, 2**16), pe=FOLD)
def test_label_select_and_topk_break_ties_like_onnxruntime(labels, k, seed, pe):
    k = min(k, labels)
    x = np.random.default_rng(seed).integers(0, 3, (8, labels))  # many ties
    nodes = [
        hw("LabelSelect", ["x"], ["y"], Labels=labels, PE=divisor(labels, pe), K=k, inputDataType="UINT2",
           outputDataType="UINT8"),
    ]
    assert_same_as_finn(make_model(nodes, {"x": ([1, labels], "UINT2"), "y": ([1, k], "UINT8")}), x)
    topk = helper.make_node("TopK", ["x", "k"], ["v", "y"], axis=-1, largest=1, sorted=1)
    model = make_model([topk], {"x": ([1, labels], "UINT2"), "v": ([1, k], "FLOAT32"), "y": ([1, k], "UINT32")},
                       {"k": (np.array([k]), "FLOAT32")}, int64=["y"])
    model.set_initializer("k", np.array([k], dtype=np.int64))
    assert_same_as_finn(model, x)


# --------------------------------------------------------- streamlined qonnx ops


@FAST
@given(c=st.integers(1, 4), m=st.integers(1, 6), pad_value=st.integers(0, 1), seed=st.integers(0, 2**16))
def test_streamlined_chain(c, m, pad_value, seed):
    """Im2Col (padding) -> XnorPopcountMatMul -> MultiThreshold -> MaxPoolNHWC -> Transpose
    -> QuantAvgPool2d -> Reshape -> MatMul -> MultiThreshold (NC) -> TopK."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Im2Col", ["x"], ["col"], domain=QONNX, stride=[1, 1], kernel_size=[3, 3],
                         input_shape=f"(1,8,8,{c})", pad_amount=[1, 1, 1, 1], pad_value=pad_value),
        helper.make_node("XnorPopcountMatMul", ["col", "w0"], ["pop"], domain=QONNX),
        helper.make_node("MultiThreshold", ["pop", "t0"], ["act"], domain=QONNX, out_dtype="INT4",
                         out_bias=-8.0, data_layout="NHWC"),
        helper.make_node("MaxPoolNHWC", ["act"], ["mp"], domain=QONNX, kernel_shape=[2, 2], strides=[2, 2],
                         pads=[0, 0, 0, 0]),
        helper.make_node("Transpose", ["mp"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("QuantAvgPool2d", ["nchw"], ["avg"], domain=QONNX, stride=2, kernel=2, ibits=4,
                         obits=4, signed=1, data_layout="NCHW"),
        helper.make_node("Reshape", ["avg", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w1"], ["mm"]),
        helper.make_node("MultiThreshold", ["mm", "t1"], ["q"], domain=QONNX, out_dtype="UINT2"),
        helper.make_node("TopK", ["q", "k"], ["val", "idx"], axis=-1),
    ]
    kc = 9 * c
    tensors = {
        "x": ([1, 8, 8, c], "BINARY"), "col": ([1, 8, 8, kc], "BINARY"), "pop": ([1, 8, 8, m], "UINT32"),
        "act": ([1, 8, 8, m], "INT4"), "mp": ([1, 4, 4, m], "INT4"), "nchw": ([1, m, 4, 4], "INT4"),
        "avg": ([1, m, 2, 2], "INT4"), "flat": ([1, 4 * m], "INT4"), "mm": ([1, 5], "INT32"),
        "q": ([1, 5], "UINT2"), "val": ([1, 2], "FLOAT32"), "idx": ([1, 2], "UINT32"),
    }
    inits = {
        "w0": (rng.integers(0, 2, (kc, m)), "BINARY"),
        "t0": (sorted_thresholds(rng, m, 15, 0, kc + 1), "UINT32"),
        "w1": (rng.integers(-3, 4, (4 * m, 5)), "INT3"),
        "t1": (sorted_thresholds(rng, 5, 3, -30, 30) + 0.5, "FLOAT32"),
    }
    model = make_model(nodes, tensors, inits, int64=["idx"])
    model.set_initializer("shape", np.array([1, -1], dtype=np.int64))
    model.set_initializer("k", np.array([2], dtype=np.int64))
    assert_same_as_finn(model, rng.integers(0, 2, (5, 8, 8, c)))


def test_multithreshold_nchw_default_layout():
    rng = np.random.default_rng(1)
    node = helper.make_node("MultiThreshold", ["x", "t"], ["y"], domain=QONNX, out_dtype="UINT2",
                            out_scale=2.0, out_bias=1.0)
    model = make_model([node], {"x": ([1, 3, 4, 4], "INT8"), "y": ([1, 3, 4, 4], "UINT3")},
                       {"t": (sorted_thresholds(rng, 3, 3, -50, 50), "INT8")})
    assert_same_as_finn(model, rng.integers(-60, 60, (4, 3, 4, 4)))


def test_standard_op_fallback_runs_image_by_image():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Pow", ["r", "e"], ["y"])]
    tensors = {"x": ([1, 4, 5], "FLOAT32"), "r": ([1, 4, 5], "FLOAT32"), "y": ([1, 4, 5], "FLOAT32")}
    model = make_model(nodes, tensors, {"e": (np.array([2.0]), "FLOAT32")})
    assert_same_as_finn(model, np.random.default_rng(2).normal(size=(5, 4, 5)))


# ------------------------------------------------------------- datatype checks


def xnor_mvau_model(mw=8, acc_dt="UINT4", out_dt=None):
    node = hw("MVAU", ["x", "w"], ["y"], MW=mw, MH=2, SIMD=1, PE=1, inputDataType="BINARY",
              weightDataType="BINARY", accDataType=acc_dt, outputDataType=out_dt or acc_dt, binaryXnorMode=1,
              noActivation=1, numInputVectors=[1])
    return make_model([node], {"x": ([1, mw], "BINARY"), "y": ([1, 2], out_dt or acc_dt)},
                      {"w": (np.ones((mw, 2)), "BINARY")})


def test_too_narrow_accumulator_raises():
    x = np.ones((3, 8))  # all agree with the weights: popcount 8 needs UINT4
    assert execute_graph(xnor_mvau_model(acc_dt="UINT4"), x)["y"].max() == 8
    with pytest.raises(DatatypeOverflow) as err:
        execute_graph(xnor_mvau_model(acc_dt="UINT3"), x)
    assert err.value.datatype == "UINT3" and err.value.max == 8 and "accumulator" in str(err.value)


def test_too_narrow_output_annotation_raises():
    model = xnor_mvau_model(acc_dt="UINT4", out_dt="UINT4")
    model.set_tensor_datatype("y", DataType["UINT2"])
    with pytest.raises(DatatypeOverflow, match=r"node .*: y holds values in \[8, 8\].*UINT2"):
        execute_graph(model, np.ones((2, 8)))


def test_non_integer_and_input_values_are_checked():
    with pytest.raises(DatatypeOverflow, match="graph input"):
        execute_graph(xnor_mvau_model(), np.full((1, 8), 2.0))
    with pytest.raises(DatatypeOverflow, match="not all integers"):
        execute_graph(xnor_mvau_model(), np.full((1, 8), 0.5))


def test_weights_must_fit_their_datatype():
    model = xnor_mvau_model()
    model.set_initializer("w", np.full((8, 2), 2.0, dtype=np.float32))
    with pytest.raises(DatatypeOverflow, match="w holds"):
        execute_graph(model, np.ones((1, 8)))


# ------------------------------------------------------------------ the executor


def test_chunks_and_intermediate_tensors():
    rng = np.random.default_rng(3)
    model = pool_graph(4, 2, "QuantAvgPool", simd=4)
    x = rng.integers(-8, 8, (10, 8, 8, 4))
    a = execute_graph(model, x, tensors=["win"], batch_size=3)
    b = execute_graph(model, x, tensors=["win"], batch_size=64)
    assert a["win"].shape == (10, 4, 4, 16) and a["y"].shape == (10, 4, 4, 4)
    for t in ("win", "y"):
        np.testing.assert_array_equal(a[t], b[t])
    with pytest.raises(ValueError, match="does not match"):
        execute_graph(model, x[:, :4])


def test_unsupported_op_is_named():
    node = hw("VVAU", ["x", "w"], ["y"], PE=1, SIMD=1, Dim=[1, 1], Channels=2, Kernel=[1, 1],
              inputDataType="INT4", weightDataType="INT4", outputDataType="INT8", accDataType="INT8")
    model = make_model([node], {"x": ([1, 1, 1, 2], "INT4"), "y": ([1, 1, 1, 2], "INT8")},
                       {"w": (np.ones((2, 1, 1, 1)), "INT4")})
    with pytest.raises(NotImplementedError, match="VVAU"):
        execute_graph(model, np.zeros((1, 1, 1, 2)))


@FAST
@given(
    k=st.integers(1, 3),
    stride=st.integers(1, 3),
    pad=st.integers(0, 1),
    ceil_mode=st.integers(0, 1),
    size=st.integers(3, 7),
    seed=st.integers(0, 2**16),
)
def test_maxpool_nhwc(k, stride, pad, ceil_mode, size, seed):
    pad = min(pad, k // 2)  # onnxruntime wants pads smaller than the kernel
    span = size + 2 * pad - k
    o = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (o - 1) * stride >= size + pad:
        o -= 1
    node = helper.make_node("MaxPoolNHWC", ["x"], ["y"], domain=QONNX, kernel_shape=[k, k], strides=[stride, stride],
                            pads=[pad] * 4, ceil_mode=ceil_mode)
    model = make_model([node], {"x": ([1, size, size, 3], "INT4"), "y": ([1, o, o, 3], "INT4")})
    assert_same_as_finn(model, np.random.default_rng(seed).integers(-8, 8, (4, size, size, 3)))
