"""The folding search: legal foldings, inside the budget, at least as fast as FINN's target_fps.

Uses the tiny variants built up to specialize_layers once per session (shared folder with
test_fifos / test_benchmark); the three default models are compared in the slow test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnnflow.errors import BnnflowError

from test_fifos import default_fold, specialised  # noqa: F401  (shared build folder helpers)


@pytest.fixture(scope="module")
def board():
    from bnnflow.hw.boards import get_board

    return get_board("pynq-z2")


@pytest.fixture(scope="module")
def cnv_tiny(tmp_path_factory):
    return specialised(tmp_path_factory, "cnv")


@pytest.fixture(scope="module")
def cnv_fold(cnv_tiny, board):
    from bnnflow.build_flows.folding import fold

    return fold(cnv_tiny[0], board, name="cnv/tiny")


def test_board_budget_limits(board):
    b = board.budget()
    assert b["LUT"] == pytest.approx(0.85 * board.lut) and b["BRAM_18K"] == pytest.approx(0.95 * board.bram18)
    assert b["DSP"] == pytest.approx((1 - board.shell_reserve) * board.dsp)
    assert board.budget(0.5, 0.5)["LUT"] == pytest.approx(0.5 * board.lut)
    with pytest.raises(BnnflowError, match="LUT limit"):
        board.budget(lut_max=1.5)


def test_folding_is_legal_and_fits(cnv_fold, board):
    from qonnx.custom_op.registry import getCustomOp

    res = cnv_fold
    ev = res.evaluation
    assert ev.fits and all(ev.total[k] <= res.budget[k] + 1e-6 for k in ev.total)
    assert ev.fps == pytest.approx(board.clock_mhz * 1e6 / ev.max_cycles)
    for node in res.model.graph.node:
        inst = getCustomOp(node)
        op = node.op_type
        if op.startswith("MVAU"):
            simd, pe = inst.get_nodeattr("SIMD"), inst.get_nodeattr("PE")
            assert inst.get_nodeattr("MW") % simd == 0 and inst.get_nodeattr("MH") % pe == 0
            assert simd == 1 or simd * inst.get_input_datatype(1).bitwidth() <= 36  # mvau_wwidth_max
        elif op.startswith("ConvolutionInputGenerator"):
            simd = inst.get_nodeattr("SIMD")
            assert inst.get_nodeattr("IFMChannels") % simd == 0
            if inst.get_nodeattr("parallel_window"):
                assert simd == inst.get_nodeattr("IFMChannels")
        elif op.startswith(("Thresholding", "DuplicateStreams")):
            assert inst.get_nodeattr("NumChannels") % inst.get_nodeattr("PE") == 0
        elif op.startswith("Pool"):
            swg = getCustomOp(res.model.find_producer(node.input[0]))
            assert swg.get_nodeattr("SIMD") == inst.get_nodeattr("PE")  # depthwise window tied to the pool
        # every node's folded shapes exist (FINN raises on an illegal folding)
        inst.get_folded_input_shape(0)
        inst.get_folded_output_shape(0)
        # no layer is faster than it needs to be by more than one divisor step would explain
        assert inst.get_exp_cycles() <= ev.max_cycles


def test_search_beats_or_matches_finn_target_fps(cnv_tiny, board):
    from bnnflow.build_flows.folding import compare_with_target_fps

    cmp = compare_with_target_fps(cnv_tiny[0], board, name="cnv/tiny")
    base, best, ours = cmp["rows"]
    assert "target_fps=1000" in base["method"] and ours["method"] == "bnnflow search"
    assert ours["fits"] and best["fits"]
    assert ours["fps"] >= best["fps"] >= base["fps"]
    assert cmp["search_ge_baseline"]


def test_tighter_budget_is_respected(cnv_tiny, cnv_fold, board):
    from bnnflow.build_flows.folding import fold

    small = fold(cnv_tiny[0], board, lut_max=0.2, name="cnv/tiny")
    assert small.evaluation.fits and small.evaluation.total["LUT"] <= 0.2 * board.lut
    assert small.evaluation.fps <= cnv_fold.evaluation.fps


def test_model_that_cannot_fit_names_layers_and_shortfall(cnv_tiny, board):
    from bnnflow.build_flows.folding import fold

    with pytest.raises(BnnflowError) as err:
        fold(cnv_tiny[0], board, lut_max=0.01, bram_max=0.01, name="cnv/tiny")
    msg = str(err.value)
    assert "cannot fit the pynq-z2 at any folding" in msg and "MVAU_" in msg
    assert "budget" in msg or "Mbit" in msg


def test_config_is_finn_format_and_applies(cnv_fold, cnv_tiny, tmp_path):
    from finn.transformation.general import ApplyConfig
    from qonnx.custom_op.registry import getCustomOp

    from bnnflow.build_flows.folding import load_config, write_config

    path = write_config(cnv_fold.config, tmp_path / "fold.json")
    cfg = load_config(path)
    assert cfg["Defaults"] == {}
    names = {n.name for n in cnv_tiny[0].graph.node}
    assert set(cfg) - {"Defaults"} == names
    m = cnv_tiny[0].transform(ApplyConfig(str(path)))
    for node in m.graph.node:
        for attr, value in cfg[node.name].items():
            assert getCustomOp(node).get_nodeattr(attr) == value, (node.name, attr)


def test_build_with_folding_auto(cnv_tiny, cnv_fold, board):
    """`bnnflow build --folding auto`: the search runs after specialize_layers and the flow applies it."""
    from rich.console import Console

    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import BuildRequest, run_build
    from bnnflow.build_flows.folding import AUTO_FOLDING_FILE

    out = cnv_tiny[1]
    (out / AUTO_FOLDING_FILE).unlink(missing_ok=True)
    res = run_build(BuildRequest("cnv", "tiny", out=out, from_step="target_fps_parallelization",
                                 stop_after=flow.ESTIMATE_STEP, folding=Path("auto")), Console(quiet=True))
    assert (out / AUTO_FOLDING_FILE).exists()
    assert flow.BuildState(out).data["done"][-1] == flow.ESTIMATE_STEP
    applied = json.loads((out / "report" / "applied_folding_config.json").read_text())
    assert applied["MVAU_hls_1"]["PE"] == cnv_fold.config["MVAU_hls_1"]["PE"]
    assert res["summary"]["max_cycles"] == cnv_fold.evaluation.max_cycles
    assert res["summary"]["fits"]
    # the estimate's verdict charges the FIFOs and width converters exactly as the search did
    for r in ("LUT", "BRAM_18K"):
        assert res["summary"]["total"][r] == pytest.approx(cnv_fold.evaluation.total[r])
    assert res["summary"]["fifo_and_dwc"]["LUT"] > 0


def test_cli_fold_reuses_build_and_writes_config(cnv_tiny, tmp_path, capsys):
    from bnnflow.cli import main

    out_file = tmp_path / "cnv.json"
    code = main(["fold", "cnv", "--variant", "tiny", "--build", str(cnv_tiny[1]), "--out", str(out_file)])
    text = capsys.readouterr().out
    assert code == 0 and out_file.exists()
    assert "Reusing the specialised graph" in text and "Estimated" in text and "FPS" in text
    assert main(["fold", "cnv", "--variant", "tiny", "--build", str(cnv_tiny[1]), "--lut-max", "2"]) == 2


@pytest.mark.slow
def test_search_vs_target_fps_on_default_models(tmp_path_factory, board):
    """The search finds >= the estimated FPS of FINN's SetFolding at fitting resources (resnete, densenet, cnv)."""
    from bnnflow.build_flows.folding import compare_with_target_fps

    for model in ("cnv", "resnete", "densenet"):
        m, res = default_fold(model, tmp_path_factory)
        cmp = compare_with_target_fps(m, board, name=model, result=res)
        assert cmp["search_ge_baseline"], cmp["rows"]
