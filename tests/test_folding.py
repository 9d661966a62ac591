"""The folding search: legal foldings, inside the budget, at least as fast as FINN's target_fps.

Uses the tiny variants' builds (tests/conftest.py, once per session, read-only: a test that builds in the
folder takes a copy); the three default models are compared in the slow test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnnflow.errors import BnnflowError

from conftest import copy_build


@pytest.fixture(scope="module")
def board():
    from bnnflow.hw.boards import get_board

    return get_board("pynq-z2")


@pytest.fixture(scope="module")
def cnv_tiny(tiny_specialised):
    """(specialised graph, build folder) of cnv/tiny; the folder is shared: copy it before building in it."""
    return tiny_specialised("cnv")


@pytest.fixture(scope="module")
def cnv_fold(tiny_fold):
    return tiny_fold("cnv")


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


def _divisors_below(n: int, value: int) -> list[int]:
    return [d for d in range(1, value) if n % d == 0]


def slower_foldings(model) -> list[dict]:
    """For every parallelism knob of every node: the design with that knob at its next smaller legal value.

    Written from FINN's folding rules, not from the search's units: MVAU SIMD | MW and PE | MH,
    a window generator's SIMD | its channels (or parallel_window off), a pool and its depthwise
    window generator together, PE | channels for thresholds, adds, duplicates, label select."""
    from qonnx.custom_op.registry import getCustomOp

    from bnnflow.build_flows.fifos import base_op

    out = []
    for node in model.graph.node:
        inst, op = getCustomOp(node), base_op(node.op_type)
        if op == "MVAU":
            for attr, dim in (("SIMD", "MW"), ("PE", "MH")):
                below = _divisors_below(inst.get_nodeattr(dim), inst.get_nodeattr(attr))
                if below:
                    out.append({node.name: {attr: below[-1]}})
        elif op == "Pool":
            below = _divisors_below(inst.get_nodeattr("Channels"), inst.get_nodeattr("PE"))
            swg = model.find_producer(node.input[0])
            if below:
                out.append({node.name: {"PE": below[-1]}, swg.name: {"SIMD": below[-1]}})
        elif op in ("Thresholding", "DuplicateStreams", "LabelSelect", "ElementwiseAdd"):
            ch = inst.get_nodeattr("Labels") if op == "LabelSelect" else inst.get_normal_output_shape()[-1]
            below = _divisors_below(ch, inst.get_nodeattr("PE"))
            if below:
                out.append({node.name: {"PE": below[-1]}})
        elif op == "ConvolutionInputGenerator" and not inst.get_nodeattr("depthwise"):
            if inst.get_nodeattr("parallel_window"):
                out.append({node.name: {"parallel_window": 0}})
            else:
                below = _divisors_below(inst.get_nodeattr("IFMChannels"), inst.get_nodeattr("SIMD"))
                if below:
                    out.append({node.name: {"SIMD": below[-1]}})
    return out


def assert_no_layer_faster_than_needed(res, board):
    """The search's claim: at the design's cycle budget (its slowest layer) every layer takes its cheapest
    folding, so slowing any one knob down one legal step either breaks the budget or makes the whole
    design (layers + depth-2 FIFOs + converters, FINN's estimates, as the search charges them; the
    join FIFOs are sized afterwards) no cheaper in LUT and BRAM."""
    import copy

    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from bnnflow.build_flows.folding import evaluate

    ev = evaluate(res.model, board, res.budget, size_joins=False)
    assert ev.max_cycles == res.evaluation.max_cycles
    alternatives = slower_foldings(res.model)
    assert len(alternatives) >= 10
    for change in alternatives:
        m = ModelWrapper(copy.deepcopy(res.model.model))
        nodes = {n.name: n for n in m.graph.node}
        for name, attrs in change.items():
            for k, v in attrs.items():
                getCustomOp(nodes[name]).set_nodeattr(k, v)
        alt = evaluate(m, board, res.budget, size_joins=False)
        cheaper = alt.total["LUT"] <= ev.total["LUT"] and alt.total["BRAM_18K"] <= ev.total["BRAM_18K"] and \
            (alt.total["LUT"] < ev.total["LUT"] or alt.total["BRAM_18K"] < ev.total["BRAM_18K"])
        assert alt.max_cycles > ev.max_cycles or not cheaper, (
            f"{change}: {alt.max_cycles} <= {ev.max_cycles} cycles at LUT {alt.total['LUT']:.0f} "
            f"(design {ev.total['LUT']:.0f}), BRAM {alt.total['BRAM_18K']} (design {ev.total['BRAM_18K']})")


@pytest.mark.parametrize("model", ["cnv", "resnete", "densenet"])
def test_no_layer_is_faster_than_it_needs_to_be(model, tiny_fold, board):
    assert_no_layer_faster_than_needed(tiny_fold(model), board)


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


def test_build_with_folding_auto(cnv_tiny, cnv_fold, board, tmp_path):
    """`bnnflow build --folding auto`: the search runs after specialize_layers and the flow applies it."""
    from rich.console import Console

    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import BuildRequest, run_build
    from bnnflow.build_flows.build_folding import AUTO_FOLDING_FILE

    out = copy_build(cnv_tiny[1], tmp_path / "cnv")  # it builds in the folder
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

    build = copy_build(cnv_tiny[1], tmp_path / "build")  # `fold` writes its report into the build
    out_file = tmp_path / "cnv.json"
    code = main(["fold", "cnv", "--variant", "tiny", "--build", str(build), "--out", str(out_file)])
    text = capsys.readouterr().out
    assert code == 0 and out_file.exists()
    assert "Reusing the specialised graph" in text and "Estimated" in text and "FPS" in text
    assert main(["fold", "cnv", "--variant", "tiny", "--build", str(build), "--lut-max", "2"]) == 2


@pytest.mark.slow
def test_search_vs_target_fps_on_default_models(default_fold, board):
    """The search finds >= the estimated FPS of FINN's SetFolding at fitting resources (resnete, densenet, cnv)."""
    from bnnflow.build_flows.folding import compare_with_target_fps

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    titles = {"cnv": "| CNV-W1A1 |", "resnete": "| ResNetE |", "densenet": "| BinaryDenseNet |"}
    for model in ("cnv", "resnete", "densenet"):
        m, res = default_fold(model)
        cmp = compare_with_target_fps(m, board, name=model, result=res)
        assert cmp["search_ge_baseline"], cmp["rows"]
        # the README's `bnnflow fold MODEL --compare` table (default weights): deterministic estimates
        row = next(x for x in readme if x.startswith(titles[model]) and "bnnflow" not in x and x.count("|") == 5
                   and "**" in x)
        base, best, ours = cmp["rows"]
        assert f"{base['fps']:,.0f} FPS, {base['LUT_pct']:.1f} % LUT |" in row, (row, base)
        assert f"| {best['fps']:,.0f} FPS, {best['LUT_pct']:.1f} % LUT" in row, (row, best)
        assert f"**{ours['fps']:,.0f} FPS**, {ours['LUT_pct']:.1f} % LUT, {ours['BRAM_pct']:.1f} % BRAM" in row, \
            (row, ours)
        assert f"({cmp['speedup_vs_best_baseline']:.2f}x)" in row, (row, cmp["speedup_vs_best_baseline"])
