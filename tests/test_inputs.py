"""Issue 13's careless user: every wrong folding config or flag ends in one sentence and a non-zero exit,
and the build folder it was aimed at is byte-identical afterwards.

One tiny CNV build per session (cut back to the estimates: tests/conftest.py's cnv_estimates), copied for
each destructive try.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bnnflow.cli import main

from conftest import one_sentence, snapshot


@pytest.fixture
def built(cnv_estimates):
    """(build folder, FINN's folding config of it): cnv/tiny built to the estimates, shared; never touched."""
    return cnv_estimates


@pytest.fixture
def victim(built, tmp_path):
    """A copy of the finished build, and its snapshot."""
    copy = tmp_path / "b"
    shutil.copytree(built[0], copy)
    return copy, snapshot(copy)


def refused(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    assert code != 0
    return one_sentence(err)


def folding_file(tmp_path: Path, config) -> Path:
    path = tmp_path / "fold.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return path


def with_layer(config: dict, prefix: str, **attrs) -> tuple[dict, str]:
    name = next(k for k in config if k.startswith(prefix))
    return {**config, name: {**config[name], **attrs}}, name


# ------------------------------------------------------------------ the table, row by row


@pytest.mark.parametrize("how", [["--force"], ["--from-step", "apply_folding_config"]], ids=["force", "from-step"])
def test_malformed_folding_json_keeps_the_build(capsys, victim, tmp_path, how):
    out, before = victim
    fold = folding_file(tmp_path, '{"MVAU_hls_0": {"PE": 3')
    msg = refused(capsys, "build", "cnv", "--variant", "tiny", "--build", out, "--folding", fold, *how)
    assert "is not valid JSON" in msg and "fold.json" in msg
    assert snapshot(out) == before


@pytest.mark.parametrize("prefix, attrs, needle", [
    ("MVAU", {"PE": 3}, "PE=3 on layer 'MVAU_hls_0'"),
    ("MVAU", {"SIMD": 5}, "SIMD=5 on layer 'MVAU_hls_0'"),
    ("Thresholding", {"PE": 100000}, "PE=100000 on layer 'Thresholding_rtl_0'"),
    ("MVAU", {"PE": 0}, "must be a positive integer"),
    ("MVAU", {"ram_style": "ultra"}, "needs UltraRAM"),
    ("MVAU", {"ram_style": "fast"}, "allowed: auto, block, distributed, ultra"),
    ("MVAU", {"PE": "4"}, "must be an integer"),
], ids=["pe3", "simd5", "pe100000", "pe0", "uram", "ram-style", "pe-string"])
@pytest.mark.parametrize("how", [["--force"], ["--from-step", "apply_folding_config"]], ids=["force", "from-step"])
def test_illegal_folding_is_refused_before_anything_changes(capsys, built, victim, tmp_path, prefix, attrs, needle,
                                                            how):
    out, before = victim
    config, _ = with_layer(built[1], prefix, **attrs)
    msg = refused(capsys, "build", "cnv", "--variant", "tiny", "--build", out, "--folding",
                  folding_file(tmp_path, config), *how)
    assert needle in msg
    if "PE=3" in needle:  # the values allowed, from FINN's own shapes
        assert "allowed PE values are 1, 2, 4, 8, 16 (the divisors of MH=16)" in msg
    assert snapshot(out) == before


def test_unknown_layer_is_an_error_not_a_log_line(capsys, built, victim, tmp_path):
    out, before = victim
    fold = folding_file(tmp_path, {**built[1], "NoSuchLayer_7": {"PE": 1}})
    msg = refused(capsys, "build", "cnv", "--variant", "tiny", "--build", out, "--from-step", "apply_folding_config",
                  "--folding", fold)
    assert "names layer 'NoSuchLayer_7', which this model does not have" in msg and "MVAU_hls_0" in msg
    assert snapshot(out) == before


@pytest.mark.parametrize("fps", ["-10", "0", "100000001"])
def test_nonsensical_target_fps(capsys, victim, fps):
    out, before = victim
    msg = refused(capsys, "build", "cnv", "--variant", "tiny", "--build", out, "--force", "--target-fps", fps)
    assert "--target-fps must be a frame rate from 1 to 100,000,000" in msg and msg.endswith(f"not {fps}.")
    assert snapshot(out) == before


def test_deploy_refuses_zero_images(capsys, built, tmp_path):
    pkg = tmp_path / "pkg"
    msg = refused(capsys, "deploy", "cnv", "--variant", "tiny", "--build", built[0], "--out", pkg, "--images", "0")
    assert "--images must be at least 1, not 0" in msg
    assert not pkg.exists()


@pytest.mark.parametrize("extra, needle", [
    (["--data", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--images", "20000"], "more than the 10000 CIFAR-10 test images"),
    (["--target-fps", "-10"], "--target-fps must be"),
], ids=["data", "too-many-images", "target-fps"])
def test_deploy_checks_its_inputs_before_building(capsys, tmp_path, extra, needle):
    build, pkg = tmp_path / "build", tmp_path / "pkg"
    msg = refused(capsys, "deploy", "cnv", "--variant", "tiny", "--build", build, "--out", pkg, *extra)
    assert needle in msg
    assert not build.exists() and not pkg.exists()


def test_folding_given_after_the_folding_step_restarts_there(capsys, built, victim, tmp_path):
    """A new folding with a later --from-step is applied (the build restarts at the folding step) and the
    state records it, instead of being silently ignored as before."""
    from bnnflow.build_flows import flow

    out, _ = victim
    fold = folding_file(tmp_path, built[1])
    code = main([str(a) for a in ("build", "cnv", "--variant", "tiny", "--build", out, "--from-step",
                                  flow.ESTIMATE_STEP, "--folding", fold, "--stop-after", flow.ESTIMATE_STEP)])
    printed, err = capsys.readouterr()
    assert code == 0 and not err and f"restarts at {flow.FOLDING_STEP}" in " ".join(printed.split())
    state = flow.BuildState(out).data
    assert state["folding"] == str(fold.resolve()) and state["identity"]["folding"].startswith("sha256:")


def test_damaged_build_state_is_one_sentence(capsys, victim):
    out, _ = victim
    (out / "build_state.json").write_text('{"done": 3}')
    before = snapshot(out)
    assert "is damaged" in refused(capsys, "build", "cnv", "--variant", "tiny", "--build", out, "--resume")
    assert snapshot(out) == before


# ------------------------------------------------------------------ a failure midway changes nothing it should not


def test_force_restores_the_old_build_when_the_new_one_fails(capsys, built, victim, tmp_path, monkeypatch):
    """Past the early check (as for a folder of another model), the flow's own check fails at the folding
    step and the set-aside build comes back."""
    from bnnflow.build_flows import build

    out, before = victim
    monkeypatch.setattr(build, "_check_folding_early", lambda *a: None)
    config, _ = with_layer(built[1], "MVAU", PE=3)
    msg = refused(capsys, "build", "cnv", "--variant", "tiny", "--build", out, "--force", "--folding",
                  folding_file(tmp_path, config), "--random-weights")
    assert "PE=3 on layer 'MVAU_hls_0'" in msg
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["b", "fold.json"], "nothing left beside it"


def test_ctrl_c_during_force_restores_the_old_build(capsys, victim, monkeypatch):
    from bnnflow.build_flows import build

    out, before = victim

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "prepare_network", interrupted)  # Ctrl-C while the new build has begun
    code = main(["build", "cnv", "--variant", "tiny", "--build", str(out), "--force", "--random-weights"])
    assert code == 130 and "holds the build it held before --force" in one_sentence(capsys.readouterr().err)
    assert snapshot(out) == before


def test_failed_step_keeps_summary_and_marks_the_state(built, victim, monkeypatch):
    from rich.console import Console

    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import BuildRequest, run_build

    out, before = victim
    step = flow.STEPS[flow.step_index(flow.ESTIMATE_STEP)]

    def broken(model, cfg):
        raise RuntimeError("disk full")

    steps = list(flow.STEPS)
    steps[flow.step_index(flow.ESTIMATE_STEP)] = flow.Step(step.name, broken, step.tool, step.title)
    monkeypatch.setattr(flow, "STEPS", steps)
    with pytest.raises(RuntimeError):
        run_build(BuildRequest("cnv", "tiny", out=out, from_step=flow.ESTIMATE_STEP), Console(quiet=True))
    after = snapshot(out)
    changed = {k for k in before if before[k] != after.get(k)} | (after.keys() - before.keys())
    assert changed == {"build_state.json", "build.log"}, changed
    state = flow.BuildState(out).data
    assert state["failed"] == {"step": flow.ESTIMATE_STEP, "error": "RuntimeError: disk full"}


def test_finn_s_own_folding_config_passes_the_check(built):
    from qonnx.core.modelwrapper import ModelWrapper

    from bnnflow.build_flows import flow
    from bnnflow.build_flows.folding_check import check_folding

    out, config = built
    check_folding(ModelWrapper(str(flow.intermediate_path(out, "target_fps_parallelization"))), config, uram=0)
