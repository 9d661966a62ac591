"""The models obey the rules that make them map bit-exactly onto FINN's integer hardware."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from bnnflow.errors import BnnflowError
from bnnflow.models import quantizers as q
from bnnflow.models.export import export_model
from bnnflow.models.zoo import MODELS, build_model, get_variant, weight_summary


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("variant", ["tiny", "default"])
def test_forward_shape_and_weights(model, variant):
    net = build_model(model, variant).eval()
    out = net(torch.rand(3, 3, 32, 32) * 255)
    assert out.shape == (3, 10)
    w = weight_summary(net)
    assert w["binary_weights"] > 0 and w["total_mbit"] >= w["binary_mbit"]


def test_default_cnv_is_finns_cnv_w1a1():
    # CNV-W1A1: 1.54 M binary weights (64-64-128-128-256-256 convs, 512-512-10 FC)
    w = weight_summary(build_model("cnv"))
    expected = (3 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 256 * 256) * 9 + 256 * 512 + 512 * 512 + 512 * 10
    assert w["binary_weights"] == expected


def test_unknown_names_are_one_sentence():
    with pytest.raises(BnnflowError, match="Unknown model 'resnet50'"):
        get_variant("resnet50")
    with pytest.raises(BnnflowError, match="Unknown variant 'huge'"):
        get_variant("resnete", "huge")


@pytest.mark.parametrize("model", ["resnete", "densenet"])
def test_one_stream_quantizer_shared_by_every_join(model):
    net = build_model(model, "tiny")
    streams = {id(m.stream) for m in net.modules() if hasattr(m, "stream")}
    assert len(streams) == 1


def test_binary_activations_are_padded_with_minus_one():
    x = torch.ones(1, 2, 3, 3)
    y = q.BipolarPad(1)(x)
    assert y.shape == (1, 2, 5, 5)
    assert torch.all(y[..., 0, :] == -1) and torch.all(y[..., 1:-1, 1:-1] == 1)


def test_binary_weights_have_no_scaling_factor():
    conv = q.binary_conv3x3(4, 8)
    qw = conv.quant_weight()
    assert float(qw.scale) == 1.0
    assert set(np.unique(qw.value.detach().numpy())) <= {-1.0, 1.0}


def test_trunc_pool_rejects_inexact_settings():
    with pytest.raises(AssertionError):
        q.trunc_avg_pool(3, 4, 4)  # not a power of two
    with pytest.raises(AssertionError):
        q.trunc_avg_pool(2, 4, 7)  # 4 + log2(4) = 6 bits at most


PADS = {"resnete": 6, "densenet": 6, "cnv": 0}  # -1 Pad nodes in the tiny variants' export


@pytest.mark.parametrize("model", list(MODELS))
def test_export_has_quantizers_and_minus_one_pads(model, tmp_path):
    net = build_model(model, "tiny")
    path = export_model(net, tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no exporter side file (weights) left beside it
    graph = onnx.load(path).graph
    ops = {n.op_type for n in graph.node}
    assert "BipolarQuant" in ops
    init = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    pads = [n for n in graph.node if n.op_type == "Pad"]
    # the tiny variants' padded binary 3x3 convs (FINN's CNV pads nothing): a regression to zero
    # padding (through a Conv's `pads` or a Pad of value 0) changes a count or a value below
    assert len(pads) == PADS[model] == sum(type(m).__name__ == "BipolarPad" for m in net.modules())
    for node in pads:
        value = onnx.numpy_helper.to_array(init[node.input[2]]) if len(node.input) > 2 else 0
        assert float(np.asarray(value).flatten()[0]) == -1.0
    binary_convs = 0
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        pads_attr = next((list(a.ints) for a in node.attribute if a.name == "pads"), [])
        w = producer.get(node.input[1])
        if w is not None and w.op_type == "BipolarQuant":
            binary_convs += 1
            assert not any(pads_attr), f"{node.name}: a binary conv must not pad (zero is not a binary value)"
    assert binary_convs >= 4
    assert sum(1 for n in graph.node if n.op_type == "Conv" and producer.get(n.input[0]) in pads) == PADS[model]
    assert not list(tmp_path.glob("*.tmp")), "export must not leave temporary files"
