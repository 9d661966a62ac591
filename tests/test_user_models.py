"""Bring your own network: Brevitas networks the project did not write go through build, verify, fold and
deploy as bnnflow's own do, one that cannot convert gets a diagnosis, and every bad reference is one sentence.

The networks: Brevitas' bnn_pynq CNV-W1A1 and a CIFAR-10-shaped bnn_pynq FC (tests/user_nets/outside.py;
their QONNX exports: tests/test_user_onnx.py), random weights calibrated on CIFAR-10; and small plain-Brevitas
networks in tests/user_nets/ that break a FINN design rule.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnflow.cli import main
from bnnflow.errors import BnnflowError
from bnnflow.model_ref import MODEL_NAMES, OnnxRef, parse_model_args, parse_model_ref, short_source, user_source

from conftest import REPO, one_sentence, shared_npz
from user_nets.outside import CNV_ARGS, CNV_REF, FC_ARGS, FC_REF, check_package_predictions

NETS = REPO / "tests" / "user_nets" / "unconvertible.py"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------- references (fast)


@pytest.mark.parametrize("text, kind, attr", [
    ("nets/my_net.py:make", "file", "make"),
    ("/abs/dir/net.py:Net", "file", "Net"),
    ("C:/models/net.py:build", "file", "build"),
    ("brevitas_examples.bnn_pynq.models:cnv_1w1a", "module", "cnv_1w1a"),
    ("pkg.mod:Factory.create", "module", "Factory.create"),
])
def test_references_users_write_parse(text, kind, attr):
    ref = parse_model_ref(text)
    assert ref.attr == attr and (ref.file is not None) == (kind == "file")


def test_zoo_names_stay_zoo_names():
    assert all(parse_model_ref(name) is None for name in MODEL_NAMES)


@pytest.mark.parametrize("text, needle", [
    ("resnet50", "choose one of resnete, densenet, cnv, or name your own network as path/to/file.py:factory"),
    ("net.py:", "does not end in a Python name"),
    ("net.py:1abc", "does not end in a Python name"),
    (":make", "names neither"),
    ("my-net:make", "names neither"),
    ("pkg..mod:f", "names neither"),
    ("pkg.mod:class", "does not end in a Python name"),
])
def test_bad_references_are_one_sentence(text, needle):
    with pytest.raises(BnnflowError) as exc:
        parse_model_ref(text)
    assert needle in one_sentence(exc.value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40),
                 st.builds(lambda a, b: f"{a}:{b}", st.text(max_size=20), st.text(max_size=12)),
                 st.builds(lambda a, b: f"{a}.py:{b}", st.text(max_size=20), st.text(max_size=12))))
def test_any_reference_parses_or_is_one_sentence(text):
    try:
        ref = parse_model_ref(text)
    except BnnflowError as exc:
        msg = str(exc)
        assert "\n" not in msg and msg.endswith(".") and "Traceback" not in msg
        return
    if isinstance(ref, OnnxRef):  # a name ending in .onnx: a QONNX file (checked when it is read)
        assert text.lower().endswith(".onnx") and ref.file == Path(text)
        return
    assert ref is None or (ref.attr and (ref.file is not None or ref.module))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=30))
def test_any_model_args_parse_or_are_one_sentence(text):
    try:
        assert isinstance(parse_model_args(text), dict)
    except BnnflowError as exc:
        assert "\n" not in str(exc) and str(exc).endswith(".")


def test_the_source_names_the_file_content(tmp_path):
    net = tmp_path / "net.py"
    net.write_text("def make():\n    return None\n")
    ref = parse_model_ref(f"{net}:make")
    before = user_source(ref, {}, "raw")
    assert before.startswith(f"file:{net.resolve()}:make@sha256:")
    net.write_text("def make():\n    return 1\n")
    after = user_source(ref, {"width": 8}, "unit")
    assert after != before and after.endswith(';args={"width":8};input=unit')
    assert short_source(after).startswith(f"file:{net.resolve()}:make (sha256:")
    assert user_source(parse_model_ref(CNV_REF), {}, "raw") == f"module:{CNV_REF}"


# ---------------------------------------------------------------------------- the CLI, refusing (fast)


FACTORIES = """
import torch
def broken():
    raise ValueError("width must be even")
def not_a_module():
    return 42
def needs(width):
    return torch.nn.Linear(width, 10)
"""


@pytest.mark.parametrize("argv, needle", [
    (["build", "resnet50"], "Unknown model 'resnet50': choose one of resnete, densenet, cnv, or name your own"),
    (["build", "/nonexistent/net.py:make"], "does not exist"),
    (["build", "{nets}:Nope"], "has no attribute 'Nope'"),
    (["build", "{tmp}/f.py:broken"], "raised ValueError (width must be even)"),
    (["build", "{tmp}/f.py:not_a_module"], "not a torch.nn.Module"),
    (["build", "{tmp}/f.py:needs"], "check --model-args"),
    (["build", "{tmp}/f.py:needs", "--model-args", "[3]"], "must be a JSON object"),
    (["build", "no_such_module_x:make"], "Cannot import module no_such_module_x"),
    (["build", "cnv", "--model-args", "{}"], "--model-args is for your own network"),
    (["build", "cnv", "--input-scale", "unit"], "take raw 0..255 pixels"),
    (["build", "{nets}:OddPool", "--variant", "tiny"], "--variant is for bnnflow's own models"),
    (["build", "{nets}:TwoScaleAdd", "--checkpoint", "{tmp}/f.py"], "corrupt or not a PyTorch file"),
])
def test_user_model_errors(capsys, tmp_path, argv, needle):
    (tmp_path / "f.py").write_text(FACTORIES)
    argv = [a.replace("{nets}", str(NETS)).replace("{tmp}", str(tmp_path)) for a in argv] + ["--build", tmp_path / "b"]
    code, _, err = run_cli(capsys, *argv)
    assert code != 0
    assert needle in one_sentence(err), err


def test_a_state_dict_that_does_not_fit_is_one_sentence(capsys, tmp_path):
    import torch

    torch.save({"conv0.weight": torch.zeros(1)}, tmp_path / "w.pt")
    code, _, err = run_cli(capsys, "build", f"{NETS}:OddPool", "--checkpoint", tmp_path / "w.pt",
                           "--build", tmp_path / "b")
    assert code != 0 and "does not fit the network" in one_sentence(err)


# ---------------------------------------------------------------------------- tie guard (fast)


def test_tie_guard_reads_quantizers_that_return_plain_tensors():
    """Brevitas' CNV returns plain tensors everywhere: the guard reads its grids through the proxies."""
    from brevitas_examples.bnn_pynq.models import cnv_1w1a

    from bnnflow.models.tie_guard import guard_rounding_ties
    from bnnflow.models.user_model import PixelInput

    result = guard_rounding_ties(PixelInput(cnv_1w1a(pretrained=False), 1 / 255))
    assert result["channels_checked"] == 64 + 64 + 128 + 128 + 256 + 256 + 512 + 512
    assert "skipped" not in result


def test_tie_guard_skips_what_it_cannot_read_and_says_so():
    import torch
    from brevitas.nn import QuantConv2d

    from bnnflow.models.tie_guard import guard_rounding_ties

    net = torch.nn.Sequential(QuantConv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    result = guard_rounding_ties(net)
    assert result["channels_checked"] == 0
    assert result["skipped"][0]["module"] == "1" and "not followed by an activation quantizer" in \
        result["skipped"][0]["why"]


# ---------------------------------------------------------------------------- builds (one per network)


@pytest.fixture(scope="module")
def data_dir():
    if not shared_npz("test").is_file():
        pytest.skip("real CIFAR-10 not found (set BNNFLOW_DATA)")
    return shared_npz("test").parent


def _estimate(tmp_path_factory, name: str, ref: str, args: list[str]) -> Path:
    out = tmp_path_factory.mktemp(name) / "build"
    assert main(["estimate", ref, *args, "--build", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def brevitas_cnv(tmp_path_factory, data_dir):
    return _estimate(tmp_path_factory, "bcnv", CNV_REF, CNV_ARGS)


@pytest.fixture(scope="module")
def brevitas_fc(tmp_path_factory, data_dir):
    return _estimate(tmp_path_factory, "bfc", FC_REF, FC_ARGS)


def _verify(out: Path, ref: str, args: list[str], data: Path, images: int) -> dict:
    code = main(["verify", ref, *args, "--build", str(out), "--images", str(images), "--data", str(data)])
    report = json.loads((out / "verify.json").read_text())
    assert code == 0 and report["all_identical"], report["stages"]
    return report


@pytest.mark.slow
def test_brevitas_cnv_builds_and_verifies_bit_exact(brevitas_cnv, data_dir):
    state = json.loads((brevitas_cnv / "build_state.json").read_text())
    assert state["identity"]["source"] == f"module:{CNV_REF};args={{\"pretrained\":false}};input=unit"
    assert state["user_model"]["input_scale"] == "unit" and "skipped" not in state["tie_guard"]
    summary = json.loads((brevitas_cnv / "summary.json").read_text())
    assert summary["fits"]
    report = _verify(brevitas_cnv, CNV_REF, CNV_ARGS, data_dir, 20)
    assert [s["identical_integer_logits"] for s in report["stages"]] == [20] * len(report["stages"])


@pytest.mark.slow
def test_brevitas_cnv_folds(brevitas_cnv, tmp_path):
    out = tmp_path / "fold.json"
    assert main(["fold", CNV_REF, *CNV_ARGS, "--build", str(brevitas_cnv), "--out", str(out)]) == 0
    assert any("PE" in v for v in json.loads(out.read_text()).values() if isinstance(v, dict))


@pytest.mark.slow
def test_brevitas_fc_builds_and_verifies_bit_exact(brevitas_fc, data_dir):
    report = _verify(brevitas_fc, FC_REF, FC_ARGS, data_dir, 20)
    assert [s["identical_integer_logits"] for s in report["stages"]] == [20] * len(report["stages"])


@pytest.mark.slow
def test_brevitas_fc_folds_and_deploys(brevitas_fc, tmp_path, data_dir):
    """The Python reference as the user typed it, through fold and deploy on the build verify checked."""
    out = tmp_path / "fold.json"
    assert main(["fold", FC_REF, *FC_ARGS, "--build", str(brevitas_fc), "--out", str(out)]) == 0
    assert any("PE" in v for v in json.loads(out.read_text()).values() if isinstance(v, dict))
    package = tmp_path / "deploy"
    assert main(["deploy", FC_REF, *FC_ARGS, "--build", str(brevitas_fc), "--out", str(package), "--images", "10",
                 "--data", str(data_dir), "--archive", "none"]) == 0
    assert json.loads((package / "manifest.json").read_text())["model"] == FC_REF
    assert json.loads((package / "io_shape.json").read_text())["input_layout"] == "NCHW"  # no conv: C, H, W
    check_package_predictions(package, brevitas_fc)


@pytest.mark.slow
def test_a_changed_model_file_is_another_build(tmp_path, capsys):
    """The file's sha256 is part of the identity: an edited network never reuses the old build."""
    net = tmp_path / "net.py"
    net.write_text(NETS.read_text())
    out = tmp_path / "b"
    assert main(["build", f"{net}:OddPool", "--build", str(out), "--stop-after", "tidy_up"]) == 0
    net.write_text(NETS.read_text() + "\n# edited\n")
    code, _, err = run_cli(capsys, "build", f"{net}:OddPool", "--build", out, "--resume")
    assert code != 0 and "holds another build (network file:" in one_sentence(err)


@pytest.mark.slow
@pytest.mark.parametrize("factory, needle", [
    ("OddPool", "AveragePool_0 (AveragePool, after Mul, before MultiThreshold) averages 9 values, but FINN's "
                "pools divide by shifting"),
    ("BnBeforePool", "MaxPoolNHWC_0 (MaxPoolNHWC, after ElementwiseAdd, before Thresholding): likely a max pool "
                     "fed float values"),
    ("TwoScaleConcat", "Concat_0 (Concat, after ElementwiseMul, before Im2Col): likely its inputs come from "
                       "different quantizers"),
])
def test_a_network_that_cannot_convert_gets_a_diagnosis(capsys, tmp_path, factory, needle):
    code, _, err = run_cli(capsys, "build", f"{NETS}:{factory}", "--build", tmp_path / "b",
                           "--stop-after", "create_dataflow_partition")
    line = one_sentence(err)
    assert code != 0 and needle in line and "fix:" in line, line
    state = json.loads((tmp_path / "b" / "build_state.json").read_text())
    assert state["diagnosis"] in line


@pytest.mark.parametrize("record", ["user_model", "user_onnx", None])
def test_a_later_step_failing_on_a_users_network_is_one_sentence(tmp_path, record):
    """A FINN step past the dataflow partition raising on a user's network (here hw_codegen's assert, two
    sentences long) ends in one sentence naming the step; bnnflow's own models keep the traceback."""
    from bnnflow.build_flows.diagnose import diagnose_failure

    state = {"done": [], "failed": {"step": "hw_codegen", "error": "AssertionError"}}
    if record:
        state[record] = {}
    (tmp_path / "build_state.json").write_text(json.dumps(state))
    exc = AssertionError("HLS synthesis requires: SIMD >= MW / 1024. This is not fulfilled with: SIMD=2\nmore")
    message = diagnose_failure(tmp_path, exc)
    if record is None:
        assert message is None
        return
    line = one_sentence(BnnflowError(message))
    assert "FINN's step hw_codegen failed on this network (AssertionError: HLS synthesis requires: SIMD >= MW / " \
           "1024)" in line


def test_export_folds_the_pixel_scale_into_the_graph(tmp_path):
    """--input-scale unit: the graph takes raw pixels and starts with one scalar Mul by 1/255, no wrapper code."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "net.onnx"
    assert main(["export", f"{NETS}:OddPool", "--input-scale", "unit", "--out", str(out)]) == 0
    graph = onnx.load(str(out)).graph
    first = graph.node[0]
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    scale = next((inits.get(i, consts.get(i)) for i in first.input if i in inits or i in consts), None)
    assert first.op_type == "Mul" and first.input[0] == graph.input[0].name
    assert np.isclose(float(np.asarray(scale).reshape(-1)[0]), 1 / 255)


@pytest.mark.parametrize("form", ["plain", "wrapped", "nested"])
def test_weights_load_from_the_forms_users_save(tmp_path, form):
    """A plain state_dict, bnnflow's own model.brevitas.pt keys (the pixel wrapper's), or {'state_dict': ...}."""
    import torch

    from bnnflow.models.user_model import build_user_network, load_user_weights

    ref = f"{NETS}:OddPool"
    src = build_user_network(ref, {}, "unit")
    with torch.no_grad():
        src.net.conv0.weight.normal_()
    state = {"plain": src.net.state_dict(), "wrapped": src.state_dict(),
             "nested": {"state_dict": src.net.state_dict(), "epoch": 3}}[form]
    torch.save(state, tmp_path / "w.pt")
    net = load_user_weights(build_user_network(ref, {}, "unit"), tmp_path / "w.pt")
    assert torch.equal(net.net.conv0.weight, src.net.conv0.weight)
