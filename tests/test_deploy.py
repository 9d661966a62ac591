"""`bnnflow deploy`: the package's contents, its manifest, its archive, and the one-command path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bnnflow.build_flows import deploy
from bnnflow.cli import main
from bnnflow.digest import file_sha256

from conftest import one_sentence

PACKAGE_FILES = {"bnnflow_driver.py", "packing.py", "classify_cifar10.ipynb", "hw_graph.onnx", "io_shape.json",
                 "manifest.json", "test_images.npz"}


def brevitas_top1(build: Path, x: np.ndarray) -> np.ndarray:
    from bnnflow.build_flows.verify import run_brevitas
    from bnnflow.models.checkpoint import load_checkpoint

    net, _ = load_checkpoint(build / "model.brevitas.pt")
    return run_brevitas(net, np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)).argmax(axis=1)


@pytest.mark.slow
def test_package_contents_and_manifest(package):
    build, pkg = package
    assert {p.name for p in pkg.iterdir()} == PACKAGE_FILES
    m = json.loads((pkg / "manifest.json").read_text())
    assert (m["model"], m["variant"], m["board"]) == ("cnv", "tiny", "pynq-z2")
    assert m["hardware"] == "none" and m["bitfile"] is None and "off the board only" in m["hardware_note"]
    assert m["backends"] == ["functional model (no board)"]
    summary = json.loads((build / "summary.json").read_text())
    assert m["estimates"]["fps"] == summary["fps"] and m["estimates"]["latency_ms"] == summary["latency_ms"]
    assert m["checkpoint"] is None and m["checkpoint_sha256"] is None
    assert m["weights_sha256"] == file_sha256(build / "model.brevitas.pt")
    for tool in ("finn-plus", "qonnx", "brevitas", "torch", "numpy", "python"):
        assert m["tools"][tool] not in ("", None, "not installed"), tool
    assert m["tools"]["finn-plus"] == "1.6.1" and m["tools"]["vivado"] == "none"
    assert m["build"]["stopped_at"] == "hw_ipgen" and m["build"]["graph"] == "hw_codegen.onnx"
    mvau = {k: v for k, v in m["folding"]["layers"].items() if k.startswith("MVAU")}
    assert mvau and all(v["PE"] >= 1 and v["SIMD"] >= 1 for v in mvau.values())
    for name, digest in m["files"].items():
        assert file_sha256(pkg / name) == digest, name
    assert set(m["files"]) == PACKAGE_FILES - {"manifest.json"}
    assert pkg.stat().st_mode & 0o777 == 0o755 and (pkg / "io_shape.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_io_shape_describes_the_hardware_graph(package):
    from finn.util.data_packing import finnpy_to_packed_bytearray
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.util.basic import gen_finn_dt_tensor

    _, pkg = package
    io = json.loads((pkg / "io_shape.json").read_text())
    g = ModelWrapper(str(pkg / "hw_graph.onnx"))
    first, last = getCustomOp(g.graph.node[0]), getCustomOp(g.graph.node[-1])
    assert io["idt"] == ["DataType['UINT8']"] and io["ishape_normal"] == [[1, 32, 32, 3]]
    assert tuple(io["ishape_folded"][0]) == first.get_folded_input_shape()
    assert g.graph.node[-1].op_type.startswith("LabelSelect") and io["topk"] == last.get_nodeattr("K")
    assert tuple(io["oshape_folded"][0]) == last.get_folded_output_shape()
    for side in "io":  # FINN's get_driver_shapes: the packed shape of a dummy folded tensor
        dt = DataType[io[f"{side}dt"][0][10:-2]]
        dummy = gen_finn_dt_tensor(dt, io[f"{side}shape_folded"][0])
        assert list(finnpy_to_packed_bytearray(dummy, dt).shape) == io[f"{side}shape_packed"][0]
    assert io["classes"][:2] == ["airplane", "automobile"] and io["bitfile"] is None
    assert io["estimated_fps"] > 0 and io["graph"] == "hw_graph.onnx"


@pytest.mark.slow
def test_packaged_images_are_real_cifar10_and_predictions_match_brevitas(package, cifar_test):
    build, pkg = package
    d = np.load(pkg / "test_images.npz")
    x, y = cifar_test
    assert len(d["x"]) == 100 and np.array_equal(d["x"], x[:100]) and np.array_equal(d["y"], y[:100])
    ref = brevitas_top1(build, d["x"])
    assert np.array_equal(d["expected"], ref)
    m = json.loads((pkg / "manifest.json").read_text())
    assert m["accuracy"]["package_images"] == 100
    assert m["accuracy"]["package_images_top1"] == pytest.approx(float(np.mean(ref == y[:100])))


@pytest.mark.slow
def test_archive_holds_the_folder(package):
    _, pkg = package
    archive = pkg.with_name(pkg.name + ".zip")
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        assert names == {f"{pkg.name}/{f}" for f in PACKAGE_FILES}
        assert zf.read(f"{pkg.name}/io_shape.json") == (pkg / "io_shape.json").read_bytes()
    assert not [p for p in pkg.parent.iterdir() if p.name.startswith(".")], "temporary files left behind"
    deploy.check_package_out(pkg, "zip")  # a package and its own archive are replaced by the next deploy


@pytest.mark.slow
def test_bitfile_build_makes_a_board_package(package, tmp_path):
    build, _ = package
    copy = tmp_path / "build"
    shutil.copytree(build, copy, ignore=shutil.ignore_patterns("finn_tmp"))
    (copy / "bitfile").mkdir()
    (copy / "bitfile" / "finn-accel.bit").write_bytes(b"bit")
    (copy / "bitfile" / "finn-accel.hwh").write_text("<EDKSYSTEM/>")
    (copy / "driver").mkdir()  # FINN's own driver settings name the bitfile's DMAs
    (copy / "driver" / "settings.json").write_text(json.dumps(
        {"driver_information": {"io_shape_dict": {"idma_names": ["idma_in"], "odma_names": ["odma_out"]}}}))
    m = deploy.make_package(copy, tmp_path / "pkg", images=0, archive="tar.gz")
    pkg = tmp_path / "pkg"
    assert m["hardware"] == "bitfile" and m["bitfile"] == "finn-accel.bit" and m["hwh"] == "finn-accel.hwh"
    assert (pkg / "finn-accel.bit").read_bytes() == b"bit" and (pkg / "finn-accel.hwh").is_file()
    io = json.loads((pkg / "io_shape.json").read_text())
    assert io["bitfile"] == "finn-accel.bit" and (io["idma_names"], io["odma_names"]) == (["idma_in"], ["odma_out"])
    assert not (pkg / "test_images.npz").exists() and (tmp_path / "pkg.tar.gz").is_file()
    deploy.check_package_out(pkg, "tar.gz")


@pytest.mark.slow
def test_cli_reuses_a_finished_build_and_refuses_to_clobber(package, tmp_path, monkeypatch, capsys):
    build, _ = package
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code = main(["deploy", "cnv", "--variant", "tiny", "--build", str(build), "--out", str(out)])
    assert code == 2 and "not a bnnflow deployment package" in one_sentence(capsys.readouterr().err)
    assert (out / "notes.txt").read_text() == "keep me"
    code = main(["deploy", "resnete", "--variant", "tiny", "--build", str(build)])
    assert code == 2 and "(network cnv, not resnete)" in one_sentence(capsys.readouterr().err)
    code = main(["deploy", "cnv", "--variant", "tiny", "--build", str(build), "--images", "20", "--archive", "none"])
    printed = capsys.readouterr().out
    assert code == 0 and "Packaging the existing build" in printed and "Off-board only" in printed
    pkg = tmp_path / "deploy" / "cnv-tiny-pynq-z2"
    assert len(np.load(pkg / "test_images.npz")["x"]) == 20 and not pkg.with_name(pkg.name + ".zip").exists()


@pytest.mark.slow
def test_one_command_builds_then_packages(package, tmp_path, monkeypatch, capsys):
    """`bnnflow deploy cnv --variant tiny` in a fresh folder builds (here: a stand-in for run_build) then packages."""
    from bnnflow.build_flows import build as build_mod
    from bnnflow.errors import MissingToolError

    built, _ = package
    calls = []

    def fake_run_build(req, console=None):
        calls.append(req)
        shutil.copytree(built, req.out, ignore=shutil.ignore_patterns("finn_tmp"))
        return {"out": req.out, "summary": {}, "stopped": MissingToolError("Step 'hw_ipgen' needs Vitis HLS.")}

    monkeypatch.setattr(build_mod, "run_build", fake_run_build)
    monkeypatch.chdir(tmp_path)
    assert main(["deploy", "cnv", "--variant", "tiny", "--images", "10"]) == 0
    printed = capsys.readouterr().out
    assert len(calls) == 1 and calls[0].out == (tmp_path / "build" / "cnv-tiny-pynq-z2").resolve()
    from bnnflow.build_flows import flow

    assert calls[0].stop_after == flow.STEP_NAMES[-1] and not calls[0].resume  # as far as the tools allow
    assert (calls[0].model, calls[0].variant) == ("cnv", "tiny")
    assert "needs Vitis HLS" in printed and "Off-board only" in printed
    assert (tmp_path / "deploy" / "cnv-tiny-pynq-z2" / "manifest.json").is_file()
    assert (tmp_path / "deploy" / "cnv-tiny-pynq-z2.zip").is_file()
    assert main(["deploy", "cnv", "--variant", "tiny", "--images", "10"]) == 0  # now finished: reused
    assert len(calls) == 1 and "Packaging the existing build" in capsys.readouterr().out
    ckpt = tmp_path / "other.pt"
    ckpt.write_bytes(b"x")
    assert main(["deploy", "cnv", "--variant", "tiny", "--checkpoint", str(ckpt)]) == 2
    assert "weights random:seed=0;calibration=2, not sha256:" in one_sentence(capsys.readouterr().err)


@pytest.mark.parametrize("archive, mine", [("zip", "pkg"), ("zip", "pkg.zip"), ("tar.gz", "pkg.tar.gz"),
                                           ("none", "pkg")])
def test_a_users_file_in_the_packages_place_is_refused_before_any_build(tmp_path, capsys, archive, mine):
    (tmp_path / mine).write_text("mine")
    code = main(["deploy", "cnv", "--build", str(tmp_path / "b"), "--out", str(tmp_path / "pkg"), "--archive", archive])
    printed = capsys.readouterr()
    err = one_sentence(printed.err)
    assert code == 2 and ("is not an archive of a bnnflow deployment package" in err if mine != "pkg" else
                          "exists and is not a folder" in err)
    assert printed.out == ""  # not even the committed-checkpoint line: nothing was loaded
    assert (tmp_path / mine).read_text() == "mine" and not (tmp_path / "b").exists()


def test_cli_import_stays_light():
    code = ("import sys, bnnflow.cli as c; c.parser().parse_args(['deploy', 'cnv']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'finn', 'qonnx', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
