"""What a build is: one saved identity, one reuse check (`ensure_build`), one sentence when it differs.

The unit tests need no build; the folder tests copy the shared tiny CNV build (never change it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnflow.build_flows.identity import (AUTO_FOLDING, CALIBRATION_VERSION, EXPORT, FIRST_EXPORT, BuildIdentity,
                                          BuildRequest, folding_id, request_identity, saved_identity, weights_id)
from bnnflow.hw.boards import get_board


def ident(**kw) -> BuildIdentity:
    base = dict(source="zoo:cnv", variant="tiny", board="pynq-z2", weights="random:seed=0",
                folding="target_fps:1000", budget="lut=0.85,bram=0.95")
    return BuildIdentity(**{**base, **kw})


def test_differences_name_each_field_and_only_those():
    a = ident()
    b = ident(board="zcu104", weights="sha256:" + "ab" * 32)
    assert a.differences(b) == ["board", "weights"]
    assert a.differences(b, BuildIdentity.FOLDING_FIELDS) == []
    text = a.describe_difference(b, a.differences(b))
    assert "board pynq-z2, not zcu104" in text and "weights random:seed=0, not sha256:abab" in text
    assert a.matches(ident(folding="auto"), through_folding=False)
    assert not a.matches(ident(folding="auto"))


@settings(max_examples=40, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(list(BuildIdentity.__dataclass_fields__)),
                              st.text(min_size=1, max_size=12), max_size=6))
def test_identity_round_trips_through_json_and_differs_exactly_where_changed(fields):
    a = ident()
    b = ident(**fields)
    assert BuildIdentity.from_dict(json.loads(json.dumps(b.as_dict()))) == b
    changed = [f for f in BuildIdentity.__dataclass_fields__ if getattr(a, f) != getattr(b, f)]
    assert a.differences(b) == changed and a.matches(b) == (not changed)


def test_request_identity_hashes_weights_and_folding(tmp_path):
    board = get_board("pynq-z2")
    ckpt, fold = tmp_path / "w.pt", tmp_path / "f.json"
    ckpt.write_bytes(b"weights")
    fold.write_text("{}")
    a = request_identity(BuildRequest("cnv", "tiny", checkpoint=ckpt), board, fold)
    assert a.weights.startswith("sha256:") and a.folding.startswith("sha256:")
    ckpt.write_bytes(b"other weights")
    assert request_identity(BuildRequest("cnv", "tiny", checkpoint=ckpt), board, fold).weights != a.weights
    assert request_identity(BuildRequest("cnv", "tiny", seed=3), board, None).weights == f"random:seed=3;calibration={CALIBRATION_VERSION}"
    assert request_identity(BuildRequest("cnv", "tiny", target_fps=500), board, None).folding == "target_fps:500"
    assert folding_id(Path(AUTO_FOLDING), None) == "auto"
    assert request_identity(BuildRequest("cnv", "tiny", lut_max=0.5), board, None).budget == "lut=0.5,bram=0.95"


def test_builds_from_before_the_identity_are_read_from_their_fields(tmp_path):
    fold = tmp_path / "f.json"
    fold.write_text("{}")
    old = {"model": "cnv", "variant": "tiny", "board": "pynq-z2", "done": [], "checkpoint": None, "seed": 2,
           "folding": str(fold), "target_fps": None}
    have = saved_identity(old)
    # random weights from before the identity: the first calibration, so never today's weights_id(None, 2)
    assert have == ident(weights="random:seed=2", folding=folding_id(fold, None), export=FIRST_EXPORT)
    assert have.weights != weights_id(None, 2)
    assert saved_identity({}) is None


def test_builds_exported_by_an_older_tie_guard_are_not_reused():
    """An identity saved before the export field existed: the first tie guard adjusted its weights."""
    saved = ident().as_dict()
    del saved["export"]
    have = BuildIdentity.from_dict(saved)
    assert have.export == FIRST_EXPORT != EXPORT == ident().export
    assert not have.matches(ident(), through_folding=False)
    assert have.describe_difference(ident(), have.differences(ident())) == f"export {FIRST_EXPORT}, not {EXPORT}"


# ---------------------------------------------------------------------------- on a build folder


@pytest.fixture
def cnv_copy(tiny_cnv_build, tmp_path) -> Path:
    out = tmp_path / "cnv"
    shutil.copytree(tiny_cnv_build, out)
    return out


def _error(fn) -> str:
    from bnnflow.errors import BnnflowError

    with pytest.raises(BnnflowError) as info:
        fn()
    return str(info.value)


def test_board_mismatch_is_refused_by_every_path(cnv_copy):
    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import ensure_build, run_build

    before = (cnv_copy / flow.STATE_FILE).read_bytes()
    other = BuildRequest("cnv", "tiny", board="zcu104", out=cnv_copy)
    for fn in (lambda: ensure_build(other, flow.ESTIMATE_STEP),
               lambda: run_build(BuildRequest("cnv", "tiny", board="zcu104", out=cnv_copy, resume=True)),
               lambda: run_build(BuildRequest("cnv", "tiny", board="zcu104", out=cnv_copy,
                                              from_step=flow.ESTIMATE_STEP))):
        msg = _error(fn)
        assert "board pynq-z2, not zcu104" in msg and msg.count(". ") == 0 and msg.endswith(".")
    assert (cnv_copy / flow.STATE_FILE).read_bytes() == before


def test_weights_mismatch_is_refused_and_any_weights_takes_the_folders(cnv_copy):
    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import ensure_build

    msg = _error(lambda: ensure_build(BuildRequest("cnv", "tiny", seed=7, out=cnv_copy), flow.ESTIMATE_STEP))
    assert f"weights {weights_id(None, 0)}, not {weights_id(None, 7)}" in msg and "--force" in msg
    out, reused, _ = ensure_build(BuildRequest("cnv", "tiny", seed=7, out=cnv_copy, any_weights=True),
                                  flow.ESTIMATE_STEP)
    assert reused and out == cnv_copy.resolve()


def test_same_build_is_reused_without_running_a_step(cnv_copy):
    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import ensure_build

    stamp = {p: p.stat().st_mtime_ns for p in (cnv_copy / "intermediate_models").iterdir()}
    out, reused, result = ensure_build(BuildRequest("cnv", "tiny", out=cnv_copy), flow.ESTIMATE_STEP)
    assert reused and result is None
    assert {p: p.stat().st_mtime_ns for p in (cnv_copy / "intermediate_models").iterdir()} == stamp


def test_from_step_with_a_new_folding_restarts_at_the_folding_step_and_the_state_follows(cnv_copy):
    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import run_build
    from rich.console import Console

    config = json.loads((cnv_copy / "report" / "auto_folding_config.json").read_text())
    mvau = next(k for k in config if k.startswith("MVAU"))
    config[mvau]["PE"] = 1  # a legal folding that differs from FINN's target_fps choice
    config[mvau]["SIMD"] = 1
    new = cnv_copy.parent / "new_folding.json"
    new.write_text(json.dumps(config))
    times = {}
    old_run_steps = flow.run_steps

    def spy(out_dir, cfg, start, stop, on_step=None):
        times["start"] = start
        return old_run_steps(out_dir, cfg, start, stop, on_step)

    flow.run_steps = spy
    try:
        run_build(BuildRequest("cnv", "tiny", out=cnv_copy, from_step=flow.ESTIMATE_STEP,
                               stop_after=flow.ESTIMATE_STEP, folding=new), Console(quiet=True))
    finally:
        flow.run_steps = old_run_steps
    assert times["start"] == flow.FOLDING_STEP  # not generate_estimate_reports: the folding must be applied
    state = flow.BuildState(cnv_copy).data
    assert state["folding"] == str(new.resolve())
    assert state["identity"]["folding"] == folding_id(new, None)
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from bnnflow.build_flows.deploy import package_manifest

    graph = flow.intermediate_path(cnv_copy, flow.ESTIMATE_STEP)
    node = ModelWrapper(str(graph)).get_node_from_name(mvau)
    assert getCustomOp(node).get_nodeattr("PE") == 1 and getCustomOp(node).get_nodeattr("SIMD") == 1
    # the deployment manifest reads the folding from the state
    manifest = package_manifest(cnv_copy, flow.BuildState(cnv_copy), {}, ModelWrapper(str(graph)), graph, None)
    assert manifest["folding"]["config"] == str(new.resolve())
    assert manifest["folding"]["layers"][mvau]["PE"] == 1
