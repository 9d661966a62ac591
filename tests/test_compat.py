"""The work-arounds in bnnflow.compat keep results identical to the stock libraries."""

from __future__ import annotations

import copy

import pytest
import torch
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

    out = []
    for name in ("resnete", "densenet"):
        path = export_model(build_model(name, "tiny"), tmp_path_factory.mktemp(name) / "m.onnx")
        model = cleanup_model(ModelWrapper(str(path))).transform(ConvertQONNXtoFINN())
        out.append(model.transform(LowerConvsToMatMul()).transform(GiveUniqueNodeNames()))
    return out


@pytest.mark.parametrize("cls_name", ["GiveUniqueTensorNames", "GiveReadableTensorNames", "SortGraph"])
def test_linear_time_qonnx_passes_match_the_originals(finn_graphs, cls_name):
    import qonnx.transformation.general as general

    cls = getattr(general, cls_name)
    original = compat.QONNX_ORIGINALS[cls_name]
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
            general.GiveUniqueTensorNames.apply = compat.QONNX_ORIGINALS["GiveUniqueTensorNames"]
            try:
                slow, _ = original(cls(), copy.deepcopy(shuffled))
            finally:
                general.GiveUniqueTensorNames.apply = saved
        else:
            slow, _ = original(cls(), copy.deepcopy(shuffled))
        assert fast.model == slow.model


def test_composed_transformation_without_idle_cleanups_matches_the_original(finn_graphs):
    import qonnx.transformation.composed as composed
    from finn.transformation.streamline.absorb import AbsorbScalarBiasIntoMultiThreshold
    from finn.transformation.streamline.streamline_plus import StreamlinePlus

    for model in finn_graphs[:1]:  # the residual graph; stock StreamlinePlus is slow, one model is enough
        model = model.transform(AbsorbScalarBiasIntoMultiThreshold())
        fast = model.transform(StreamlinePlus())
        composed.ComposedTransformation.apply = compat.QONNX_ORIGINALS["ComposedTransformation"]
        try:
            slow = model.transform(StreamlinePlus())
        finally:
            composed.ComposedTransformation.apply = compat._composed_apply
        assert fast.model.SerializeToString() == slow.model.SerializeToString()
        assert len(fast.graph.node) < len(model.graph.node)  # streamlining did something


def test_xnor_accumulator_bits():
    assert compat.xnor_accumulator_bits(216) == 8  # popcount up to 216
    assert compat.xnor_accumulator_bits(255) == 8
    assert compat.xnor_accumulator_bits(256) == 9
    assert compat.xnor_accumulator_bits(1) == 1


def test_brevitas_rename_shim():
    x = torch.ones(2)
    assert x.rename(None) is x
