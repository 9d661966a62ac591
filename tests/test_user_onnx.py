"""A user's network as a QONNX file: exported with Brevitas in the test (tests/user_nets/tiny_bnn.py, and the two
brevitas_examples networks of tests/user_nets/outside.py), then built and verified from the .onnx to identical
integer logits, with the file as verify's reference, folded and deployed; and a user's own images
(`verify --data FILE.npz`), checked in one sentence each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnflow.cli import main
from bnnflow.errors import BnnflowError
from bnnflow.model_ref import OnnxRef, parse_model_ref

from conftest import REPO, one_sentence, shared_npz
from user_nets.outside import OUTSIDE, check_package_predictions, export_outside

NETS = REPO / "tests" / "user_nets"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def export_tiny(path: Path, step: float = 1.0, seed: int = 0, mean=None, std=None, **kw) -> Path:
    """TinyBNN with batch norms calibrated on pixels scaled by `step` and ties moved off the grid (what a trained
    network looks like), exported by Brevitas' own export_qonnx: the file a user brings."""
    import torch
    from brevitas.export import export_qonnx

    import bnnflow.compat  # noqa: F401
    from bnnflow.models.checkpoint import calibrate
    from bnnflow.models.tie_guard import guard_rounding_ties
    from bnnflow.models.user_model import PixelInput

    sys.path.insert(0, str(NETS))
    try:
        from tiny_bnn import TinyBNN
    finally:
        sys.path.remove(str(NETS))
    torch.manual_seed(seed)
    net = PixelInput(TinyBNN(**kw), step, mean, std)
    c, s = kw.get("channels", 3), kw.get("size", 32)
    images = np.random.default_rng(seed).integers(0, 256, (128, s, s, c), dtype=np.uint8)
    if (c, s) == (3, 32):  # bnnflow's calibration and tie guard feed CIFAR-10-shaped images
        calibrate(net, images, seed=seed)
        guard_rounding_ties(net)
    else:  # batch-norm statistics of these images, by hand
        from bnnflow.images import nchw_float

        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        with torch.no_grad():
            net.train()(torch.from_numpy(nchw_float(images)))
    export_qonnx(net.net.eval(), input_t=torch.zeros(1, c, s, s), export_path=str(path))
    return path


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="module")
def data_dir():
    if not shared_npz("test").is_file():
        pytest.skip("real CIFAR-10 not found (set BNNFLOW_DATA)")
    return shared_npz("test").parent


@pytest.fixture(scope="module")
def onnx_build(tiny_onnx, tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("onnx_build") / "build"
    code = main(["verify", str(tiny_onnx), "--build", str(out), "--images", "30", "--data", str(data_dir)])
    return out, code


# ---------------------------------------------------------------------------- the file, checked (fast)


def test_an_onnx_path_is_a_reference():
    ref = parse_model_ref("nets/My.Net.ONNX")
    assert isinstance(ref, OnnxRef) and ref.short_name == "My.Net-onnx"


def _float_onnx(path: Path) -> Path:
    import torch

    torch.onnx.export(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)),
                      torch.zeros(1, 3, 32, 32), str(path), dynamo=False)
    return path


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.write_bytes(b"\x08\x07garbage that is no protobuf" * 5), "is not a readable ONNX model"),
    (lambda p: p.write_text(""), "is not a readable ONNX model"),
    (lambda p: _float_onnx(p), "has no QONNX quantizer nodes"),
    (lambda p: None, "does not exist"),
])
def test_a_file_that_is_not_qonnx_is_one_sentence(capsys, tmp_path, make, needle):
    path = tmp_path / "net.onnx"
    make(path)
    capsys.readouterr()
    code, _, err = run_cli(capsys, "build", path, "--build", tmp_path / "b")
    assert code != 0 and needle in one_sentence(err), err
    assert not (tmp_path / "b").exists()  # checked before anything is written


def _flat_input_qonnx(path: Path) -> Path:
    """A QONNX graph (BipolarQuant, MatMul) whose input is a flat 1 x 3072 vector, not an image."""
    from onnx import TensorProto, helper
    from qonnx.core.modelwrapper import ModelWrapper

    nodes = [helper.make_node("BipolarQuant", ["x", "s"], ["q"], domain="qonnx.custom_op.general"),
             helper.make_node("MatMul", ["q", "w"], ["y"])]
    g = helper.make_graph(nodes, "flat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3072])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    m = ModelWrapper(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    m.set_initializer("s", np.ones(1, np.float32))
    m.set_initializer("w", np.ones((3072, 10), np.float32))
    m.save(str(path))
    return path


def test_an_input_that_is_not_an_image_is_one_sentence(capsys, tmp_path):
    path = _flat_input_qonnx(tmp_path / "flat.onnx")
    code, _, err = run_cli(capsys, "build", path, "--build", tmp_path / "b")
    assert code != 0 and "takes an input of shape 1x3072, but bnnflow feeds images as N x C x H x W" in \
        one_sentence(err)


@pytest.mark.parametrize("argv, needle", [
    (["--checkpoint", "{tmp}/w.pt"], "holds its weights: drop --checkpoint"),
    (["--model-args", "{}"], "--model-args is for a network named as a Python factory"),
    (["--variant", "tiny"], "--variant is for bnnflow's own models"),
    (["--random-weights"], "holds its weights: drop --random-weights"),
])
def test_flags_a_qonnx_file_does_not_take(capsys, tmp_path, tiny_onnx, argv, needle):
    (tmp_path / "w.pt").write_bytes(b"")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, _, err = run_cli(capsys, "build", tiny_onnx, *argv, "--build", tmp_path / "b")
    assert code != 0 and needle in one_sentence(err), err


def test_an_unconvertible_qonnx_file_gets_the_diagnosis(capsys, tmp_path):
    """The diagnosis reads the graph, so a QONNX file gets the same sentence as its Python network."""
    import torch
    from brevitas.export import export_qonnx

    import bnnflow.compat  # noqa: F401  (Brevitas on this torch)

    sys.path.insert(0, str(NETS))
    try:
        from unconvertible import OddPool
    finally:
        sys.path.remove(str(NETS))
    path = tmp_path / "odd.onnx"
    export_qonnx(OddPool().eval(), input_t=torch.zeros(1, 3, 32, 32), export_path=str(path))
    capsys.readouterr()
    code, _, err = run_cli(capsys, "build", path, "--build", tmp_path / "b", "--stop-after", "bnn_streamline")
    line = one_sentence(err)
    assert code != 0 and "averages 9 values, but FINN's pools divide by shifting" in line and "fix:" in line


def test_export_of_a_qonnx_file_is_one_sentence(capsys, tmp_path, tiny_onnx):
    code, _, err = run_cli(capsys, "export", tiny_onnx, "--out", tmp_path / "x.onnx")
    assert code != 0 and "is a QONNX file already" in one_sentence(err)


def test_the_reference_runs_in_float64_and_equals_float32_here(tiny_onnx, cifar_test):
    """The user's graph executed by qonnx in float64 (Conv in PyTorch); on this tie-guarded net float32 agrees."""
    from bnnflow.build_flows.onnx_input import load_user_onnx, run_graph, run_reference
    from bnnflow.images import nchw_float

    x = nchw_float(cifar_test[0][:8])
    logits, precision = run_reference(tiny_onnx, x, "raw")
    assert precision == "float64" and logits.dtype == np.float64
    assert np.array_equal(logits, run_graph(load_user_onnx(tiny_onnx), x))


def test_unit_scale_puts_one_mul_in_front(tmp_path, tiny_onnx):
    """--input-scale unit: the flow's QONNX starts with a scalar Mul by 1/255 on the raw input."""
    from bnnflow.build_flows.onnx_input import graph_inputs, import_onnx

    origin = import_onnx(tiny_onnx, tmp_path, "model.qonnx.onnx", "unit")
    from qonnx.core.modelwrapper import ModelWrapper

    m = ModelWrapper(str(tmp_path / "model.qonnx.onnx"))
    first = m.graph.node[0]
    assert first.op_type == "Mul" and first.input[0] == graph_inputs(m)[0].name
    assert np.isclose(float(m.get_initializer(first.input[1])), 1 / 255)
    assert (tmp_path / "model.source.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert origin["weights"]["binary_weights"] > 0 and origin["user_onnx"]["input_scale"] == "unit"


# ---------------------------------------------------------------------------- build + verify from the file


@pytest.mark.slow
def test_a_qonnx_file_builds_and_verifies_bit_exact(onnx_build, tiny_onnx):
    out, code = onnx_build
    report = json.loads((out / "verify.json").read_text())
    assert code == 0 and report["all_identical"], report["stages"]
    first = report["stages"][0]
    assert first["stage"] == "QONNX file as given (qonnx exec, float64)"
    assert report["reference"] == "your QONNX file (qonnx execution)"
    assert [s["identical_integer_logits"] for s in report["stages"]] == [30] * len(report["stages"])
    assert not any(s["stage"].startswith("Brevitas") for s in report["stages"])
    state = json.loads((out / "build_state.json").read_text())
    from bnnflow.digest import file_sha256

    assert state["identity"]["source"] == f"onnx:{tiny_onnx.resolve()}@sha256:{file_sha256(tiny_onnx)}"
    assert state["weights"]["binary_weights"] == 16 * 3 * 9 + 2 * 16 * 16 * 9 + 16 * 7 * 7 * 10


@pytest.mark.slow
def test_a_qonnx_file_folds_and_deploys(onnx_build, tiny_onnx, tmp_path, data_dir):
    out, _ = onnx_build
    fold = tmp_path / "fold.json"
    assert main(["fold", str(tiny_onnx), "--build", str(out), "--out", str(fold)]) == 0
    assert any("PE" in v for v in json.loads(fold.read_text()).values() if isinstance(v, dict))
    package = tmp_path / "deploy"
    assert main(["deploy", str(tiny_onnx), "--build", str(out), "--out", str(package), "--images", "5",
                 "--data", str(data_dir), "--archive", "none"]) == 0
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["model"] == str(tiny_onnx) and manifest["checkpoint"] == str(tiny_onnx.resolve())


@pytest.mark.slow
def test_a_changed_qonnx_file_is_another_build(onnx_build, tiny_onnx, tmp_path, capsys):
    out, _ = onnx_build
    edited = tmp_path / "tiny.onnx"
    export_tiny(edited, seed=1)
    capsys.readouterr()
    code, _, err = run_cli(capsys, "build", edited, "--build", out, "--resume")
    assert code != 0 and "holds another build (network onnx:" in one_sentence(err), err


@pytest.mark.slow
def test_a_unit_scaled_qonnx_file_verifies_bit_exact(tmp_path, data_dir):
    path = export_tiny(tmp_path / "unit.onnx", step=1 / 255)
    out = tmp_path / "b"
    assert main(["verify", str(path), "--input-scale", "unit", "--build", str(out), "--images", "20",
                 "--data", str(data_dir)]) == 0
    report = json.loads((out / "verify.json").read_text())
    assert report["all_identical"] and report["stages"][0]["identical_integer_logits"] == 20
    assert json.loads((out / "build_state.json").read_text())["identity"]["source"].endswith(";input=unit")


@pytest.mark.slow
def test_verify_names_the_first_stage_and_tensor_that_differ(onnx_build, tiny_onnx, data_dir, monkeypatch, capsys):
    """A deliberately broken HW layer: the HW-layer graph's last Thresholding flips 40 of its outputs, in the
    HW-layer and the folded graph alike. verify names that stage and that node's output, with the sizes."""
    from qonnx.core.modelwrapper import ModelWrapper

    from bnnflow.build_flows import flow, functional_ops

    out, _ = onnx_build
    hw = ModelWrapper(str(flow.intermediate_path(out, flow.HW_STEP)))
    first = hw.get_nodes_by_op_type("Thresholding")[-1]  # binary, right before the classifier
    real = functional_ops.OPS["Thresholding"]

    def broken(n, *xs):
        y = np.array(real(n, *xs))
        if n.name in (first.name, first.name.replace("Thresholding", "Thresholding_rtl")):
            flat = y.reshape(len(y), -1)
            flat[:, :40] = (flat[:, :40] == 0)  # 0 <-> 1, still inside the output's datatype
        return y

    monkeypatch.setitem(functional_ops.OPS, "Thresholding", broken)
    code, stdout, _ = run_cli(capsys, "verify", tiny_onnx, "--build", out, "--images", 5, "--data", data_dir)
    found = json.loads((out / "verify.json").read_text())["first_difference"]
    assert code == 1 and found["stage"] == "HW-layer graph" and found["images_differing"] > 0
    assert found["tensor"]["tensor"] == first.output[0] and found["tensor"]["against"] == "streamlined FINN graph"
    assert found["tensor"]["elements_differing"] == 40 and found["tensor"]["max_abs_diff"] == 1
    line = " ".join(stdout.split())
    assert "The first stage that differs from your QONNX file (qonnx execution) is 'HW-layer graph'" in line
    assert f"its first differing tensor is {first.output[0]} (output of {first.name}, Thresholding): 40 of" in line


@pytest.mark.slow
def test_verify_names_a_qonnx_tensor_against_brevitas(tmp_path, data_dir, monkeypatch, capsys):
    """A Python network, its exported QONNX broken in one activation quantizer (40 signs flipped, in qonnx's
    execution only): verify names the QONNX stage and that quantizer's output, matched against Brevitas' modules."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.general.bipolar_quant import BipolarQuant

    from bnnflow.build_flows import flow

    ref = f"{NETS / 'tiny_bnn.py'}:TinyBNN"
    out = tmp_path / "b"
    assert main(["estimate", ref, "--build", str(out)]) == 0
    q = ModelWrapper(str(out / flow.QONNX_FILE))
    target = [n for n in q.graph.node if n.op_type == "BipolarQuant" and q.get_initializer(n.input[0]) is None][-1]
    real = BipolarQuant.execute_node

    def broken(self, context, graph):
        real(self, context, graph)
        if self.onnx_node.name == target.name:
            y = context[self.onnx_node.output[0]]
            y.reshape(len(y), -1)[:, :40] *= -1

    monkeypatch.setattr(BipolarQuant, "execute_node", broken)
    capsys.readouterr()
    code, stdout, _ = run_cli(capsys, "verify", ref, "--build", out, "--images", 5, "--data", data_dir)
    found = json.loads((out / "verify.json").read_text())["first_difference"]
    assert code == 1 and found["stage"] == "QONNX (qonnx exec)" and found["reference"] == "Brevitas"
    t = found["tensor"]
    assert (t["tensor"], t["elements_differing"], t["max_abs_diff"]) == (target.output[0], 40, 2.0), t
    assert t["against"] == "Brevitas (PyTorch, float64)"
    assert f"its first differing tensor is {target.output[0]} (output of {target.name}, BipolarQuant): 40 of" in \
        " ".join(stdout.split())


# ---------------------------------------------------------------------------- networks the project did not write


@pytest.fixture(scope="module", params=sorted(OUTSIDE))
def outside_build(request, tmp_path_factory, cifar_train, data_dir):
    """brevitas_examples' CNV-W1A1 or FC as the QONNX file a user exports, built and verified once (20 images)."""
    name = request.param
    folder = tmp_path_factory.mktemp(f"outside_{name}")
    path = export_outside(name, folder / f"{name}.onnx", cifar_train[0])
    out = folder / "build"
    code = main(["verify", str(path), "--input-scale", "unit", "--build", str(out), "--images", "20",
                 "--data", str(data_dir)])
    return path, out, code


@pytest.mark.slow
def test_outside_qonnx_files_build_and_verify_bit_exact(outside_build):
    path, out, code = outside_build
    report = json.loads((out / "verify.json").read_text())
    assert code == 0 and report["all_identical"], report["stages"]
    assert report["stages"][0]["stage"] == "QONNX file as given (qonnx exec, float64)"
    assert [s["identical_integer_logits"] for s in report["stages"]] == [20] * len(report["stages"])
    state = json.loads((out / "build_state.json").read_text())
    assert state["identity"]["source"].startswith(f"onnx:{path.resolve()}@sha256:")
    assert state["identity"]["source"].endswith(";input=unit") and state["weights"]["binary_weights"] > 0


@pytest.mark.slow
def test_outside_qonnx_files_fold_and_deploy(outside_build, tmp_path, data_dir):
    path, out, _ = outside_build
    fold = tmp_path / "fold.json"
    assert main(["fold", str(path), "--input-scale", "unit", "--build", str(out), "--out", str(fold)]) == 0
    assert any("PE" in v for v in json.loads(fold.read_text()).values() if isinstance(v, dict))
    package = tmp_path / "deploy"
    assert main(["deploy", str(path), "--input-scale", "unit", "--build", str(out), "--out", str(package),
                 "--images", "10", "--data", str(data_dir), "--archive", "none"]) == 0
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["model"] == str(path) and manifest["checkpoint"] == str(path.resolve())
    check_package_predictions(package, out)


# ---------------------------------------------------------------------------- other image shapes


@pytest.fixture(scope="module")
def grey(tmp_path_factory, cifar_test):
    """A 28 x 28 grey-scale TinyBNN as QONNX, and real images for it: CIFAR-10 test images cropped and averaged."""
    folder = tmp_path_factory.mktemp("grey")
    path = export_tiny(folder / "grey.onnx", channels=1, size=28)
    x, y = cifar_test
    images = x[:40, 2:30, 2:30].mean(axis=-1, keepdims=True).astype(np.uint8)
    return path, _npz(folder / "grey.npz", x=images, y=y[:40])


@pytest.mark.slow
def test_a_grey_28x28_qonnx_file_verifies_bit_exact_on_own_images(grey, tmp_path, capsys):
    path, data = grey
    out = tmp_path / "b"
    code, stdout, _ = run_cli(capsys, "verify", path, "--build", out, "--data", data)
    report = json.loads((out / "verify.json").read_text())
    assert code == 0 and report["all_identical"] and report["images"] == 40, report["stages"]
    assert [s["identical_integer_logits"] for s in report["stages"]] == [40] * len(report["stages"])
    # CIFAR-10's 32 x 32 x 3 images do not fit this network: one sentence, after the build it reuses
    code, _, err = run_cli(capsys, "verify", path, "--build", out, "--images", 5)
    if shared_npz("test").is_file():
        assert code != 0 and "The network takes images of 28 x 28 x 1 (H x W x C), not CIFAR-10's 32 x 32 x 3" \
            in one_sentence(err)
        # deploy's package (notebook, test images, driver shapes) is CIFAR-10's: one sentence, no package
        code, _, err = run_cli(capsys, "deploy", path, "--build", out, "--out", tmp_path / "pkg", "--images", 5)
        assert code != 0 and "the deployment package is made for CIFAR-10's 32 x 32 x 3" in one_sentence(err)
        assert not (tmp_path / "pkg").exists()


def test_a_normalisation_for_other_channels_is_one_sentence(grey, tmp_path, capsys):
    path, _ = grey
    code, _, err = run_cli(capsys, "build", path, "--input-mean", "0.5,0.5,0.5", "--input-std", "0.2,0.2,0.2",
                           "--build", tmp_path / "b")
    assert code != 0 and "have 3 numbers, but" in one_sentence(err) and "takes 1-channel images" in err


# ---------------------------------------------------------------------------- verify --data FILE.npz


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.slow
def test_verify_takes_a_users_own_images(onnx_build, tiny_onnx, cifar_test, tmp_path, capsys):
    out, _ = onnx_build
    x, y = cifar_test
    data = _npz(tmp_path / "mine.npz", x=x[100:107], y=y[100:107].astype(np.int32))
    code, stdout, _ = run_cli(capsys, "verify", tiny_onnx, "--build", out, "--data", data)
    report = json.loads((out / "verify.json").read_text())
    assert code == 0 and report["images"] == 7 and report["all_identical"]
    assert report["image_source"] == f"images of {data}" and f"7 images of {data}"[:30] in " ".join(stdout.split())


@pytest.mark.slow
@pytest.mark.parametrize("arrays, needle", [
    (dict(x=np.zeros((3, 28, 28, 3), np.uint8), y=np.zeros(3, np.int64)), "holds images of 28 x 28 x 3 (H x W x C), "
                                                                           "but the network takes 32 x 32 x 3"),
    (dict(x=np.zeros((3, 32, 32, 3), np.uint8), y=np.array([0, 4, 10])), "has labels up to 10, but the network has "
                                                                         "10 classes"),
])
def test_own_images_that_do_not_fit_the_network(onnx_build, tiny_onnx, tmp_path, capsys, arrays, needle):
    out, _ = onnx_build
    code, _, err = run_cli(capsys, "verify", tiny_onnx, "--build", out, "--data", _npz(tmp_path / "d.npz", **arrays))
    assert code != 0 and needle in one_sentence(err), err


@pytest.mark.parametrize("arrays, needle", [
    (dict(x=np.zeros((2, 32, 32, 3), np.uint8)), "has no y array (it has x)"),
    (dict(images=np.zeros((2, 32, 32, 3), np.uint8)), "has no x or y array"),
    (dict(x=np.zeros((2, 32, 32, 3), np.float32), y=np.zeros(2, int)), "holds x as float32, not uint8"),
    (dict(x=np.zeros((32, 32, 3), np.uint8), y=np.zeros(2, int)), "not N x H x W x C"),
    (dict(x=np.zeros((0, 32, 32, 3), np.uint8), y=np.zeros(0, int)), "holds no images"),
    (dict(x=np.zeros((2, 32, 32, 3), np.uint8), y=np.zeros(3, int)), "labels y of shape 3 for 2 images"),
    (dict(x=np.zeros((2, 32, 32, 3), np.uint8), y=np.zeros(2, np.float32)), "float32 labels y, not integers"),
    (dict(x=np.zeros((2, 32, 32, 3), np.uint8), y=np.array([0, -1])), "negative labels"),
])
def test_own_images_are_checked_before_any_build(capsys, tmp_path, arrays, needle):
    data = _npz(tmp_path / "d.npz", **arrays)
    code, _, err = run_cli(capsys, "verify", "cnv", "--build", tmp_path / "b", "--data", data)
    assert code != 0 and needle in one_sentence(err), err
    assert not (tmp_path / "b").exists()


def test_a_corrupt_images_file_is_one_sentence(capsys, tmp_path):
    (tmp_path / "d.npz").write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = run_cli(capsys, "verify", "cnv", "--build", tmp_path / "b", "--data", tmp_path / "d.npz")
    assert code != 0 and "is not a readable .npz file" in one_sentence(err)


ARRAYS = st.builds(
    lambda dtype, shape: np.zeros(shape, dtype=dtype),
    st.sampled_from([np.uint8, np.int8, np.int64, np.uint16, np.float32, np.float64, np.bool_]),
    st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple))


@settings(max_examples=150, deadline=None)
@given(keys=st.dictionaries(st.sampled_from(["x", "y", "images", "labels"]), ARRAYS, max_size=3))
def test_any_npz_loads_valid_or_is_one_sentence(tmp_path_factory, keys):
    """Whatever arrays a .npz holds: valid images and labels come back, anything else is one sentence."""
    from bnnflow.user_images import load_images_npz

    path = tmp_path_factory.mktemp("npz") / "d.npz"
    np.savez(path, **keys)
    try:
        x, y = load_images_npz(path)
    except BnnflowError as exc:
        one_sentence(exc)
        return
    assert x.dtype == np.uint8 and x.ndim == 4 and len(x) > 0 and 0 not in x.shape
    assert y.dtype == np.int64 and y.shape == (len(x),) and (y >= 0).all()
    assert keys["x"].dtype == np.uint8 and keys["y"].dtype.kind in "iu"


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 4), hwc=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3)),
       want=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3)), top=st.integers(0, 12),
       classes=st.integers(1, 12))
def test_images_fit_the_network_or_one_sentence(n, hwc, want, top, classes):
    from bnnflow.user_images import check_images_fit

    x, y = np.zeros((n, *hwc), np.uint8), np.full(n, top, np.int64)
    try:
        check_images_fit(x, y, "d.npz", want, classes)
    except BnnflowError as exc:
        one_sentence(exc)
        assert hwc != want or top >= classes
        return
    assert hwc == want and top < classes
