"""End to end on real CIFAR-10: each model's tiny variant through the whole FINN flow.

The builds (one per model, ~1 minute each, shared by the tests through conftest's session fixture
tiny_build, read-only: the tests that build in a folder take a copy) stop at the first vendor-tool
step where Vivado / Vitis HLS are missing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from bnnflow.build_flows import flow
from bnnflow.build_flows.build import BREVITAS_FILE, BuildRequest, run_build
from bnnflow.build_flows.verify import INTEGER_TOLERANCE, verify_build
from bnnflow.errors import MissingToolError
from bnnflow.models.checkpoint import load_checkpoint

from conftest import copy_build

pytestmark = [pytest.mark.slow, pytest.mark.build]
MODELS = ("resnete", "densenet", "cnv")
VERIFY_IMAGES = 300
# classes the calibrated random-weight tiny variants predict on the first 300 test images (at least); all
# 10 integer logits are compared too (and must differ between images), not only the top-1
MIN_CLASSES = {"resnete": 8, "densenet": 8, "cnv": 9}


def assert_every_stage_identical(out, net, images, labels):
    from bnnflow.build_flows.verify import STREAMLINED_STEP, _affine, run_brevitas, to_integer_domain
    from qonnx.core.modelwrapper import ModelWrapper

    n = len(images)
    result = verify_build(out, net, images, labels, Console(quiet=True))
    for stage in result["stages"]:
        assert stage["identical_integer_logits"] == n, stage
        assert stage["same_top1"] == n, stage
        # the largest distance of a logit from the hardware's integer grid (beyond float error): float64
        # Brevitas sits on it; the float32 stages (Brevitas f32, QONNX) stay far from a rounding
        # ambiguity (0.5), although they exceed verify's own INTEGER_TOLERANCE (up to ~5e-3 measured here);
        # FINN's graphs are integer (no entry)
        limit = 1e-9 if stage["stage"] == "Brevitas (PyTorch, float64)" else 50 * INTEGER_TOLERANCE
        assert stage.get("max_distance_to_integer", 0.0) <= limit, stage
    assert result["all_identical"]
    # the reference itself: logits that differ between images and predictions over several classes
    a, b = _affine(ModelWrapper(str(flow.intermediate_path(out, STREAMLINED_STEP))))
    raw = run_brevitas(net, np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32))
    logits, worst = to_integer_domain(raw, a, b)
    assert worst <= 1e-9
    assert len(np.unique(logits, axis=0)) >= 0.8 * n
    return result, logits


@pytest.mark.parametrize("model", MODELS)
def test_every_stage_identical_to_brevitas(model, tiny_build, cifar_test):
    out = tiny_build(model)["out"]
    net, _ = load_checkpoint(out / BREVITAS_FILE)
    x, y = cifar_test
    _, logits = assert_every_stage_identical(out, net, x[:VERIFY_IMAGES], y)
    assert len(np.unique(logits.argmax(1))) >= MIN_CLASSES[model]


@pytest.mark.parametrize("model", MODELS)
def test_hardware_partition_is_all_integer_hw(model, tiny_build):
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper

    out = tiny_build(model)["out"]
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


# Golden estimates of the tiny designs as the session builds them (FINN's target_fps folding at 1,000 FPS,
# calibrated random weights, seed 0): deterministic, so a change here is a deliberate update. Reproduce
# with `.venv/bin/bnnflow estimate MODEL --variant tiny --out /tmp/MODEL-tiny` (slowest layer's cycles,
# LUT, BRAM18, DSP of the total: layers + FIFOs + converters).
GOLDEN = {"cnv": (82944, 7020, 12, 0), "resnete": (98304, 9258, 14, 14), "densenet": (98304, 9887, 12, 20)}


@pytest.mark.parametrize("model", MODELS)
def test_estimates_and_generated_code(model, tiny_build):
    result = tiny_build(model)
    summary = result["summary"]
    assert summary["fits"] and summary["fps"] > 0 and summary["total"]["LUT"] > 0
    cycles, lut, bram, dsp = GOLDEN[model]
    assert summary["max_cycles"] == cycles and summary["fps"] == pytest.approx(100e6 / cycles)
    assert (summary["total"]["LUT"], summary["total"]["BRAM_18K"], summary["total"]["DSP"]) == (lut, bram, dsp)
    out = result["out"]
    assert json.loads((out / "summary.json").read_text())["board"] == "pynq-z2"
    code = list((out / "finn_tmp").rglob("*.cpp")) + list((out / "finn_tmp").rglob("*.v")) \
        + list((out / "finn_tmp").rglob("*.sv"))
    assert code, "HLS/RTL code generation produced no sources"


def test_stops_at_vendor_boundary_and_resumes_there(tiny_build, tmp_path):
    if flow.tool_available(flow.VITIS_HLS):
        pytest.skip("Vitis HLS is installed: the build does not stop at hw_ipgen")
    result = tiny_build("cnv")
    out = copy_build(result["out"], tmp_path / "cnv")  # resumed in place
    assert isinstance(result["stopped"], MissingToolError)
    assert "hw_ipgen" in str(result["stopped"]) and "Vitis HLS" in str(result["stopped"])
    state = flow.BuildState(out)
    assert state.done[-1] == "hw_codegen" and state.data["stopped_at"] == "hw_ipgen"
    before = {p: p.stat().st_mtime_ns for p in (out / "intermediate_models").glob("*.onnx")}
    again = run_build(BuildRequest(model="cnv", variant="tiny", out=out, resume=True), Console(quiet=True))
    assert isinstance(again["stopped"], MissingToolError) and "hw_ipgen" in str(again["stopped"])
    after = {p: p.stat().st_mtime_ns for p in (out / "intermediate_models").glob("*.onnx")}
    assert before == after, "resuming must start at hw_ipgen and leave earlier outputs untouched"


def test_from_step_reruns_estimates_only(tiny_build, tmp_path):
    out = copy_build(tiny_build("cnv")["out"], tmp_path / "cnv")  # re-run in place
    qonnx_mtime = (out / flow.QONNX_FILE).stat().st_mtime_ns
    res = run_build(BuildRequest(model="cnv", variant="tiny", out=out, from_step=flow.ESTIMATE_STEP,
                                 stop_after=flow.ESTIMATE_STEP), Console(quiet=True))
    assert res["summary"]["fps"] == pytest.approx(tiny_build("cnv")["summary"]["fps"])
    assert (out / flow.QONNX_FILE).stat().st_mtime_ns == qonnx_mtime


def test_folding_config_changes_throughput(tiny_build, tmp_path):
    """A per-model folding file is applied: all-PE=1/SIMD=1 is slower than FINN's target-FPS folding."""
    out = tiny_build("cnv")["out"]
    auto = json.loads((out / "report" / "auto_folding_config.json").read_text())
    slow = {k: ({**v, "PE": 1, "SIMD": 1} if isinstance(v, dict) and "PE" in v and "SIMD" in v else v)
            for k, v in auto.items()}
    fold = tmp_path / "fold.json"
    fold.write_text(json.dumps(slow))
    res = run_build(BuildRequest(model="cnv", variant="tiny", out=tmp_path / "b", folding=fold,
                                 stop_after=flow.ESTIMATE_STEP), Console(quiet=True))
    assert res["summary"]["fps"] < tiny_build("cnv")["summary"]["fps"]
    assert np.isfinite(res["summary"]["latency_ms"])
