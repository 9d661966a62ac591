"""End to end on real CIFAR-10: each model's tiny variant through the whole FINN flow.

The builds (one per model, ~1 minute each, shared by the tests through the session fixture)
stop at the first vendor-tool step where Vivado / Vitis HLS are missing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from bnnflow.build_flows import flow
from bnnflow.build_flows.build import BREVITAS_FILE, BuildRequest, run_build
from bnnflow.build_flows.verify import verify_build
from bnnflow.errors import MissingToolError
from bnnflow.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
MODELS = ("resnete", "densenet", "cnv")
VERIFY_IMAGES = 24


@pytest.mark.parametrize("model", MODELS)
def test_every_stage_identical_to_brevitas(model, tiny_builds, cifar_test):
    out = tiny_builds[model]["out"]
    net, _ = load_checkpoint(out / BREVITAS_FILE)
    x, y = cifar_test
    result = verify_build(out, net, x[:VERIFY_IMAGES], y, Console(quiet=True))
    for stage in result["stages"]:
        assert stage["identical_integer_logits"] == VERIFY_IMAGES, stage
        assert stage["same_top1"] == VERIFY_IMAGES, stage
    assert result["all_identical"]


@pytest.mark.parametrize("model", MODELS)
def test_hardware_partition_is_all_integer_hw(model, tiny_builds):
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper

    out = tiny_builds[model]["out"]
    child = ModelWrapper(str(flow.intermediate_path(out, "hw_codegen")))
    for node in child.graph.node:
        assert node.domain.startswith("finn.custom_op.fpgadataflow"), node.op_type
        assert node.op_type.endswith(("_hls", "_rtl")), f"{node.name} was not specialised"
        for t in list(node.input[:1]) + list(node.output):
            assert child.get_tensor_datatype(t) != DataType["FLOAT32"], f"float tensor {t} at {node.name}"
    ops = {n.op_type for n in child.graph.node}
    if model == "resnete":
        assert {"DuplicateStreams_hls", "ElementwiseAdd_hls"} <= ops
    if model == "densenet":
        assert "StreamingConcat_hls" in ops
    xnor = [n for n in child.graph.node if n.op_type.startswith("MVAU")
            and any(a.name == "binaryXnorMode" and a.i == 1 for a in n.attribute)]
    assert xnor, "binary layers must run in XNOR mode"


@pytest.mark.parametrize("model", MODELS)
def test_estimates_and_generated_code(model, tiny_builds):
    result = tiny_builds[model]
    summary = result["summary"]
    assert summary["fits"] and summary["fps"] > 0 and summary["total"]["LUT"] > 0
    out = result["out"]
    assert json.loads((out / "summary.json").read_text())["board"] == "pynq-z2"
    code = list((out / "finn_tmp").rglob("*.cpp")) + list((out / "finn_tmp").rglob("*.v")) \
        + list((out / "finn_tmp").rglob("*.sv"))
    assert code, "HLS/RTL code generation produced no sources"


def test_stops_at_vendor_boundary_and_resumes_there(tiny_builds):
    if flow.tool_available(flow.VITIS_HLS):
        pytest.skip("Vitis HLS is installed: the build does not stop at hw_ipgen")
    result = tiny_builds["cnv"]
    out = result["out"]
    assert isinstance(result["stopped"], MissingToolError)
    assert "hw_ipgen" in str(result["stopped"]) and "Vitis HLS" in str(result["stopped"])
    state = flow.BuildState(out)
    assert state.done[-1] == "hw_codegen" and state.data["stopped_at"] == "hw_ipgen"
    before = {p: p.stat().st_mtime_ns for p in (out / "intermediate_models").glob("*.onnx")}
    again = run_build(BuildRequest(model="cnv", variant="tiny", out=out, resume=True), Console(quiet=True))
    assert isinstance(again["stopped"], MissingToolError) and "hw_ipgen" in str(again["stopped"])
    after = {p: p.stat().st_mtime_ns for p in (out / "intermediate_models").glob("*.onnx")}
    assert before == after, "resuming must start at hw_ipgen and leave earlier outputs untouched"


def test_from_step_reruns_estimates_only(tiny_builds):
    out = tiny_builds["cnv"]["out"]
    qonnx_mtime = (out / flow.QONNX_FILE).stat().st_mtime_ns
    res = run_build(BuildRequest(model="cnv", variant="tiny", out=out, from_step=flow.ESTIMATE_STEP,
                                 stop_after=flow.ESTIMATE_STEP), Console(quiet=True))
    assert res["summary"]["fps"] == pytest.approx(tiny_builds["cnv"]["summary"]["fps"])
    assert (out / flow.QONNX_FILE).stat().st_mtime_ns == qonnx_mtime


def test_folding_config_changes_throughput(tiny_builds, tmp_path):
    """A per-model folding file is applied: all-PE=1/SIMD=1 is slower than FINN's target-FPS folding."""
    out = tiny_builds["cnv"]["out"]
    auto = json.loads((out / "report" / "auto_folding_config.json").read_text())
    slow = {k: ({**v, "PE": 1, "SIMD": 1} if isinstance(v, dict) and "PE" in v and "SIMD" in v else v)
            for k, v in auto.items()}
    fold = tmp_path / "fold.json"
    fold.write_text(json.dumps(slow))
    res = run_build(BuildRequest(model="cnv", variant="tiny", out=tmp_path / "b", folding=fold,
                                 stop_after=flow.ESTIMATE_STEP), Console(quiet=True))
    assert res["summary"]["fps"] < tiny_builds["cnv"]["summary"]["fps"]
    assert np.isfinite(res["summary"]["latency_ms"])
