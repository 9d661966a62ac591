"""FINN rules that only bite at code generation, enforced before it: the folding search never offers a
folding FINN's code generator refuses, and a folding config that sets one is one sentence.

The case: a fully connected binary layer on a whole 32x32x3 image (MW = 3072, e.g. Brevitas' bnn_pynq FC),
whose MVAU_hls FINN's ipgen refuses below SIMD = 3 (SIMD >= MW / 1024) with a raw AssertionError.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from bnnflow.errors import BnnflowError

from conftest import one_sentence

MW, MH = 3072, 64


def mvau_graph(simd: int = 1):
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model

    node = helper.make_node(
        "MVAU_hls", ["inp", "weights", "thresh"], ["outp"], domain="finn.custom_op.fpgadataflow.hls",
        backend="fpgadataflow", name="MVAU_hls_0", MW=MW, MH=MH, SIMD=simd, PE=1, inputDataType="BINARY",
        weightDataType="BINARY", outputDataType="BINARY", accDataType="UINT32", binaryXnorMode=1,
        noActivation=0, ActVal=0, numInputVectors=[1], mem_mode="internal_decoupled")
    graph = helper.make_graph(
        [node], "fc", [helper.make_tensor_value_info("inp", TensorProto.FLOAT, [1, MW])],
        [helper.make_tensor_value_info("outp", TensorProto.FLOAT, [1, MH])])
    model = ModelWrapper(qonnx_make_model(graph, producer_name="bnnflow-test"))
    rng = np.random.default_rng(0)
    model.set_initializer("weights", rng.integers(0, 2, (MW, MH)).astype(np.float32))
    model.set_initializer("thresh", np.full((MH, 1), MW // 2, dtype=np.float32))
    for t, dt in (("inp", "BINARY"), ("weights", "BINARY"), ("outp", "BINARY")):
        model.set_tensor_datatype(t, DataType[dt])
    return model


def test_the_rule_is_finns():
    """hls_mvau_min_simd is exactly where FINN's own ipgen assertion starts to pass."""
    from qonnx.custom_op.registry import getCustomOp

    from bnnflow.build_flows.folding_check import hls_mvau_min_simd

    inst = getCustomOp(mvau_graph().graph.node[0])
    low = hls_mvau_min_simd(MW)
    assert low == 3
    for simd, ok in ((low - 1, False), (low, True)):
        inst.set_nodeattr("SIMD", simd)
        if ok:
            inst.defines("ipgen")
        else:
            with pytest.raises(AssertionError, match="SIMD >= MW / 1024"):
                inst.defines("ipgen")


def test_search_offers_only_foldings_finn_generates():
    from qonnx.custom_op.registry import getCustomOp

    from bnnflow.build_flows.folding import build_units
    from bnnflow.hw.boards import BOARDS

    model = mvau_graph()
    (unit,) = build_units(model, BOARDS["pynq-z2"].part)
    simds = {o.attrs["MVAU_hls_0"]["SIMD"] for o in unit.options}
    assert simds and min(simds) >= 3, simds
    inst = getCustomOp(model.graph.node[0])
    for simd in simds:
        inst.set_nodeattr("SIMD", simd)
        inst.defines("ipgen")  # FINN's own check, per option offered


@pytest.mark.parametrize("simd, ok", [(1, False), (2, False), (3, True), (1024, True)])
def test_folding_config_below_the_limit_is_one_sentence(simd, ok):
    from bnnflow.build_flows.folding_check import check_folding

    config = {"MVAU_hls_0": {"SIMD": simd, "PE": 1}}
    if ok:
        check_folding(mvau_graph(), config, "Folding config fold.json")
        return
    with pytest.raises(BnnflowError) as exc:
        check_folding(mvau_graph(), config, "Folding config fold.json")
    text = one_sentence(exc.value)
    assert f"SIMD={simd} on layer 'MVAU_hls_0'" in text and "SIMD >= MW / 1024" in text
    assert "allowed SIMD values are 3, 4, 6, 8" in text
