"""A user's network trained on normalised pixels, (x / 255 - mean) / std per channel (--input-mean/--input-std):
the hardware still takes raw bytes, so bnnflow puts the per-channel Mul and Add in front of the network and
streamlining folds them into the first thresholds; verified bit-exact from Python and from a QONNX file. A network
whose first conv sees the normalised pixels directly gets the one-sentence reason it cannot.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnflow.cli import main
from bnnflow.errors import BnnflowError
from bnnflow.model_ref import check_input_scale, input_affine, input_description

from conftest import REPO, one_sentence, shared_npz
from test_user_onnx import export_tiny, run_cli

TINY = f"{REPO / 'tests' / 'user_nets' / 'tiny_bnn.py'}:TinyBNN"
MEAN, STD = "0.49,0.48,0.45", "0.25,0.24,0.26"
NORM = ["--input-scale", "unit", "--input-mean", MEAN, "--input-std", STD]


@pytest.fixture(scope="module")
def data_dir():
    if not shared_npz("test").is_file():
        pytest.skip("real CIFAR-10 not found (set BNNFLOW_DATA)")
    return shared_npz("test").parent


def test_the_description_reads_back_exactly():
    text = input_description("unit", MEAN, STD)
    assert text == "unit;mean=0.49,0.48,0.45;std=0.25,0.24,0.26" == check_input_scale(text, zoo=False)
    assert input_affine(text) == (1 / 255, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    assert input_description(None, "1", "2") == "raw;mean=1.0;std=2.0"


@pytest.mark.parametrize("argv, needle", [
    (["--input-mean", MEAN], "--input-mean and --input-std go together"),
    (["--input-mean", "0.5,0.5", "--input-std", STD], "--input-mean has 2 channels and --input-std 3"),
    (["--input-mean", "1,2,3,4", "--input-std", "1,1,1,1"], "have 4 numbers, but the network takes 3-channel"),
    (["--input-mean", MEAN, "--input-std", "0.2,0,0.2"], "--input-std must be positive for every channel"),
    (["--input-mean", "a,b,c", "--input-std", STD], "--input-mean must be one number per input channel"),
    (["--input-mean", "nan,1,1", "--input-std", STD], "--input-mean must be one number per input channel"),
])
def test_bad_normalisation_flags_are_one_sentence(capsys, tmp_path, argv, needle):
    code, _, err = run_cli(capsys, "build", TINY, *argv, "--build", tmp_path / "b")
    assert code != 0 and needle in one_sentence(err), err
    assert not (tmp_path / "b").exists()


def test_bnnflows_own_models_refuse_a_normalisation(capsys, tmp_path):
    code, _, err = run_cli(capsys, "build", "cnv", "--input-mean", MEAN, "--input-std", STD, "--build", tmp_path)
    assert code != 0 and "--input-mean/--input-std are only for your own network" in one_sentence(err)


def test_the_wrapper_computes_the_normalisation():
    import torch

    from bnnflow.models.user_model import PixelInput

    seen = {}
    net = PixelInput(torch.nn.Identity(), 1 / 255, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    net.net = type("Spy", (torch.nn.Module,), {"forward": lambda self, x: seen.setdefault("x", x)})()
    x = torch.arange(3 * 4, dtype=torch.float64).reshape(1, 3, 2, 2) * 20
    net.double()(x)
    want = (x / 255 - torch.tensor([0.49, 0.48, 0.45]).reshape(1, 3, 1, 1)) / torch.tensor([0.25, 0.24, 0.26]).reshape(
        1, 3, 1, 1)
    assert torch.allclose(seen["x"], want, atol=1e-6) and not net.state_dict()  # float32 constants, as exported


@pytest.mark.slow
def test_a_normalised_python_network_verifies_bit_exact(tmp_path, data_dir):
    out = tmp_path / "b"
    assert main(["verify", TINY, *NORM, "--build", str(out), "--images", "30", "--data", str(data_dir)]) == 0
    report = json.loads((out / "verify.json").read_text())
    assert report["all_identical"] and report["stages"][0]["identical_integer_logits"] == 30
    state = json.loads((out / "build_state.json").read_text())
    assert state["identity"]["source"].endswith(f";input=unit;mean={MEAN};std={STD}")
    assert state["user_model"]["input_scale"] == f"unit;mean={MEAN};std={STD}"
    _assert_folded_into_thresholds(out)


def _assert_folded_into_thresholds(out):
    """The exported graph starts with the per-channel Mul and Add; the streamlined one with a MultiThreshold
    whose thresholds differ per channel, and no float Mul/Add left at the input."""
    from qonnx.core.modelwrapper import ModelWrapper

    from bnnflow.build_flows import flow

    q = ModelWrapper(str(out / flow.QONNX_FILE))
    assert [n.op_type for n in q.graph.node[:2]] == ["Mul", "Add"]
    assert q.get_initializer(q.graph.node[0].input[1]).shape == (1, 3, 1, 1)
    s = ModelWrapper(str(flow.intermediate_path(out, flow.STREAMLINED_STEP)))
    first = s.graph.node[0]
    thresholds = s.get_initializer(first.input[1])
    assert first.op_type == "MultiThreshold" and thresholds.shape[0] == 3
    assert not np.array_equal(thresholds[0], thresholds[1])
    assert not [n for n in s.graph.node if n.op_type in ("Mul", "Add")]


@pytest.mark.slow
def test_a_normalised_qonnx_file_verifies_bit_exact(tmp_path, data_dir):
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    path = export_tiny(tmp_path / "norm.onnx", step=1 / 255, mean=mean, std=std)
    out = tmp_path / "b"
    assert main(["verify", str(path), *NORM, "--build", str(out), "--images", "30", "--data", str(data_dir)]) == 0
    report = json.loads((out / "verify.json").read_text())
    assert report["all_identical"] and report["stages"][0]["stage"].startswith("QONNX file as given")
    _assert_folded_into_thresholds(out)


@pytest.mark.slow
def test_a_normalisation_straight_into_a_conv_is_one_sentence(capsys, tmp_path):
    code, _, err = run_cli(capsys, "build", TINY, "--model-args", '{"input_quant": false}', *NORM,
                           "--build", tmp_path / "b", "--stop-after", "convert_to_hw")
    line = one_sentence(err)
    assert code != 0 and "the per-channel input normalisation Mul_0 (Mul, from --input-mean/--input-std or the " \
        "network itself) reaches Conv_0 (Conv) before any quantizer" in line and "fix: put an input quantizer" in line


def test_without_normalisation_the_same_network_has_no_lint():
    """The rule names only a per-channel normalisation: a scalar 1/255 before the first conv is fine."""
    from onnx import TensorProto, helper
    from qonnx.core.modelwrapper import ModelWrapper

    from bnnflow.build_flows.diagnose import lint

    def graph(mul_shape):
        nodes = [helper.make_node("Mul", ["x", "m"], ["y"], name="Mul_0"),
                 helper.make_node("Conv", ["y", "w"], ["z"], name="Conv_0")]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 2, 2])])
        m = ModelWrapper(helper.make_model(g))
        m.set_initializer("m", np.full(mul_shape, 0.5, np.float32))
        m.set_initializer("w", np.ones((2, 3, 3, 3), np.float32))
        return m

    assert lint(graph(())) is None
    assert "per-channel input normalisation Mul_0" in lint(graph((1, 3, 1, 1)))
    with pytest.raises(BnnflowError):
        input_description("unit", "1,2,3", None)


NUMBERS = st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-300, 300)), max_size=5)
FLAG = st.one_of(st.none(), st.text(max_size=12), NUMBERS.map(lambda vs: ",".join(str(v) for v in vs)))


@settings(max_examples=300, deadline=None)
@given(scale=st.sampled_from([None, "raw", "unit"]), mean=FLAG, std=FLAG)
def test_any_normalisation_flags_read_back_or_are_one_sentence(scale, mean, std):
    """Whatever --input-mean/--input-std say: a description that reads back to the same numbers, or one sentence."""
    try:
        text = input_description(scale, mean, std)
    except BnnflowError as exc:
        one_sentence(exc)
        return
    if mean is None and std is None:
        assert text == scale
        return
    step, m, s = input_affine(check_input_scale(text, zoo=False))
    assert step == (1 / 255 if scale == "unit" else 1.0)
    assert m == tuple(float(v) for v in mean.split(",")) and s == tuple(float(v) for v in std.split(","))
    assert len(m) in (1, 3) and min(s) > 0 and all(np.isfinite(m + s))
