"""The work-arounds in bnnflow.compat keep results identical to the stock libraries."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from qonnx.core.modelwrapper import ModelWrapper

from bnnflow import compat
from bnnflow.models.export import export_model
from bnnflow.models.zoo import build_model

compat.finn_ready()


@pytest.fixture(scope="module")
def finn_graphs(tmp_path_factory):
    """FINN-ONNX graphs (with forks, adds and concats) straight from the exporter."""
    from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul
    from qonnx.util.cleanup import cleanup_model

    from bnnflow.models.resnete import ResNetE

    out = []
    # ResNetE cut to two stages (a plain and a downsampling block: forks and adds all the same), on which
    # stock StreamlinePlus (the composed-transformation test) takes a third of its time on the tiny variant
    nets = {"resnete": ResNetE(widths=(16, 32), blocks=(1, 1)), "densenet": build_model("densenet", "tiny")}
    for name, net in nets.items():
        path = export_model(net, tmp_path_factory.mktemp(name) / "m.onnx")
        model = cleanup_model(ModelWrapper(str(path))).transform(ConvertQONNXtoFINN())
        out.append(model.transform(LowerConvsToMatMul()).transform(GiveUniqueNodeNames()))
    return out


@pytest.mark.parametrize("cls_name", ["GiveUniqueTensorNames", "GiveReadableTensorNames", "SortGraph"])
def test_linear_time_qonnx_passes_match_the_originals(finn_graphs, cls_name):
    import qonnx.transformation.general as general

    cls = getattr(general, cls_name)
    original = compat.ORIGINALS[cls_name]
    for model in finn_graphs:
        # shuffle the node order so SortGraph has work to do
        shuffled = copy.deepcopy(model)
        nodes = list(shuffled.graph.node)
        del shuffled.graph.node[:]
        shuffled.graph.node.extend(nodes[::-1])
        fast, _ = cls.apply(cls(), copy.deepcopy(shuffled))
        if cls_name == "GiveReadableTensorNames":
            # the original calls GiveUniqueTensorNames, which must be the original too
            saved = general.GiveUniqueTensorNames.apply
            general.GiveUniqueTensorNames.apply = compat.ORIGINALS["GiveUniqueTensorNames"]
            try:
                slow, _ = original(cls(), copy.deepcopy(shuffled))
            finally:
                general.GiveUniqueTensorNames.apply = saved
        else:
            slow, _ = original(cls(), copy.deepcopy(shuffled))
        assert fast.model == slow.model


def test_linear_time_parameter_uniquing_matches_the_original(finn_graphs):
    """GiveUniqueParameterTensors on graphs whose nodes share parameters (twice in one node, too)."""
    import qonnx.transformation.general as general

    cls = general.GiveUniqueParameterTensors
    for model in finn_graphs:
        shared = copy.deepcopy(model)
        inits = {i.name for i in shared.graph.initializer}
        with_params = [n for n in shared.graph.node if any(i in inits for i in n.input)]
        first = next(i for i in with_params[0].input if i in inits)
        for node in with_params[1::3]:  # a third of the nodes take the first node's parameter instead of theirs
            k = next(k for k, i in enumerate(node.input) if i in inits)
            node.input[k] = first
        node = with_params[2]
        node.input[next(k for k, i in enumerate(node.input) if i in inits)] = first
        random.seed(0)  # the copies get random names (qonnx's make_new_valueinfo_name)
        fast, _ = cls.apply(cls(), copy.deepcopy(shared))
        random.seed(0)
        slow, _ = compat.ORIGINALS[cls.__name__](cls(), copy.deepcopy(shared))
        assert fast.model == slow.model
        assert len(fast.graph.initializer) > len(shared.graph.initializer)  # copies were made


def test_linear_time_shape_check_matches_the_original(finn_graphs):
    """ModelWrapper's shape check: same answer and same value infos added, with and without the fix for
    initializers, on a tensor without a shape, and the same assertion on a duplicated value info."""
    original = compat.ORIGINALS["check_all_tensor_shapes_specified"]
    for model in finn_graphs:
        bare = copy.deepcopy(model.model)
        init_names = {i.name for i in bare.graph.initializer}
        kept = [vi for vi in bare.graph.value_info if vi.name not in init_names]
        del bare.graph.value_info[:]
        bare.graph.value_info.extend(kept)  # initializers without value infos, as the exporter leaves some
        no_shape = copy.deepcopy(bare)
        del no_shape.graph.value_info[len(kept) // 2]
        for proto in (bare, no_shape):
            for fix in (False, True):
                fast = ModelWrapper(copy.deepcopy(proto), fix_missing_initializer_valueinfo=False)
                slow = ModelWrapper(copy.deepcopy(proto), fix_missing_initializer_valueinfo=False)
                assert fast.check_all_tensor_shapes_specified(fix) == original(slow, fix)
                assert fast.model == slow.model
        assert ModelWrapper(copy.deepcopy(bare)).check_all_tensor_shapes_specified() is True
        assert ModelWrapper(copy.deepcopy(no_shape), fix_missing_initializer_valueinfo=False) \
            .check_all_tensor_shapes_specified(True) is False
        twice = copy.deepcopy(bare)
        twice.graph.value_info.append(copy.deepcopy(kept[0]))
        for check in (compat._all_tensor_shapes_specified, original):
            with pytest.raises(AssertionError, match="Multiple ValueInfoProto"):
                check(ModelWrapper(copy.deepcopy(twice), fix_missing_initializer_valueinfo=False))


def test_indexed_datatype_inference_matches_the_original(finn_graphs):
    """InferDataTypes with every, half and none of the annotations in place (custom ops included), and
    qonnx's own error on a tensor annotated twice."""
    from qonnx.transformation.infer_datatypes import InferDataTypes

    original = compat.ORIGINALS["InferDataTypes"]
    for model in finn_graphs:
        annotated = model.transform(InferDataTypes())
        anns = list(annotated.graph.quantization_annotation)
        for keep in (anns, anns[::2], []):
            proto = copy.deepcopy(annotated.model)
            del proto.graph.quantization_annotation[:]
            proto.graph.quantization_annotation.extend(keep)
            fast, _ = InferDataTypes().apply(ModelWrapper(copy.deepcopy(proto)))
            slow, _ = original(InferDataTypes(), ModelWrapper(copy.deepcopy(proto)))
            assert fast.model == slow.model
            assert "get_tensor_datatype" not in vars(fast)  # the index was only lent for the pass
        twice = copy.deepcopy(annotated.model)
        twice.graph.quantization_annotation.append(copy.deepcopy(anns[0]))
        for apply in (InferDataTypes().apply, lambda m: original(InferDataTypes(), m)):
            with pytest.raises(Exception, match="multiple get_by_name matches"):
                apply(ModelWrapper(copy.deepcopy(twice)))


def test_composed_transformation_without_idle_cleanups_matches_the_original(finn_graphs):
    import qonnx.transformation.composed as composed
    from finn.transformation.streamline.absorb import AbsorbScalarBiasIntoMultiThreshold
    from finn.transformation.streamline.streamline_plus import StreamlinePlus

    for model in finn_graphs[:1]:  # the residual graph; stock StreamlinePlus is slow, one model is enough
        model = model.transform(AbsorbScalarBiasIntoMultiThreshold())
        fast = model.transform(StreamlinePlus())
        composed.ComposedTransformation.apply = compat.ORIGINALS["ComposedTransformation"]
        try:
            slow = model.transform(StreamlinePlus())
        finally:
            composed.ComposedTransformation.apply = compat._composed_apply
        assert fast.model.SerializeToString() == slow.model.SerializeToString()
        assert len(fast.graph.node) < len(model.graph.node)  # streamlining did something


@settings(max_examples=300, deadline=None)
@given(data=st.data(), name=st.sampled_from(["BINARY", "BIPOLAR", "INT2", "UINT3", "INT8", "UINT16", "INT31", "INT62",
                                             "UINT62", "TERNARY", "FLOAT32", "FIXED<8,4>"]),
       rows=st.integers(1, 4), n=st.integers(0, 40), extra=st.integers(-8, 12), reverse=st.booleans(),
       prefix=st.sampled_from(["0x", ""]), bad=st.booleans())
def test_fast_hex_packing_matches_finns(data, name, rows, n, extra, reverse, prefix, bad):
    """FINN's weight/threshold file packing (pack_innermost_dim_as_hex_string, which calls array2hexstring):
    the same strings, or the same exception, for any datatype, width, padding, order and prefix."""
    import finn.util.data_packing as data_packing
    import numpy as np
    from qonnx.core.datatype import DataType

    dt = DataType[name]
    if dt.is_integer():
        lo, hi = int(dt.min()), int(dt.max())
        x = np.array(data.draw(st.lists(st.integers(lo, hi), min_size=rows * n, max_size=rows * n)), np.float32)
    else:
        x = np.array(data.draw(st.lists(st.integers(-8, 7), min_size=rows * n, max_size=rows * n)), np.float32) / 2
    if bad and x.size:
        x[data.draw(st.integers(0, x.size - 1))] = 0.5 if dt.is_integer() else 1e9
    x = x.reshape(rows, n)
    pad = n * dt.bitwidth() + extra  # too narrow, not a whole hex digit, or wider than needed

    def pack():
        try:
            packed = data_packing.pack_innermost_dim_as_hex_string(x, dt, pad, reverse_inner=reverse, prefix=prefix)
            return packed.tolist()
        except Exception as e:  # noqa: BLE001 (the same failure is part of the contract)
            return type(e), str(e)

    fast = pack()
    data_packing.array2hexstring = compat.ORIGINALS["array2hexstring"]
    try:
        slow = pack()
    finally:
        data_packing.array2hexstring = compat._array2hexstring
    assert fast == slow


def test_xnor_accumulator_bits():
    assert compat.xnor_accumulator_bits(216) == 8  # popcount up to 216
    assert compat.xnor_accumulator_bits(255) == 8
    assert compat.xnor_accumulator_bits(256) == 9
    assert compat.xnor_accumulator_bits(1) == 1


def test_brevitas_rename_shim():
    x = torch.ones(2)
    assert x.rename(None) is x
