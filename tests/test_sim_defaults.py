"""`bnnflow verify MODEL --sim N` on the three default models, on real CIFAR-10 images (issue 11).

The command a user runs after `bnnflow build MODEL --stop-after specialize_layers` (conftest's
default_build, shared with the folding and FIFO tests of the default models, which run in this session
too): CNV-W1A1 default on 3 images, ResNetE and BinaryDenseNet default on 2 each, each with the weights
commands take by default (its committed checkpoint, else random weights calibrated on CIFAR-10).
Every HLS node must run as its cppsim binary, every RTL node in Verilator, every tensor must equal the
functional model's and the cppsim logits Brevitas's, image by image. The stages before cppsim run on
100 images each: the README's verify table of the default models is this test's.

Marked `simdefaults` (and `slow`): the compiles take minutes on 2 cores, less with a warm compiler
cache ($BNNFLOW_CCACHE_DIR, build_flows/sim_ccache.py), so `make test` can run them beside the rest.
In CI (tests/conftest.py data_required) missing sources or Verilator fail instead of skipping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from bnnflow.build_flows import cppsim, flow, hls_sources, verilator_build

from conftest import copy_build, data_required, shared_npz

pytestmark = [pytest.mark.simdefaults, pytest.mark.slow, pytest.mark.build]

# model -> images through --sim (at least 3 for CNV, 2 for the others: issue 11)
IMAGES = {"cnv": 3, "resnete": 2, "densenet": 2}
VERIFY_IMAGES = 100  # through every stage before cppsim
HLS_KINDS = {cppsim.HLS, *cppsim.HLS_REIMPLEMENTED.values()}
RTL_KINDS = {verilator_build.RTL, verilator_build.PATCHED}


def tools_or_skip() -> None:
    why = hls_sources.unavailable() or verilator_build.unavailable()
    if why is None:
        return
    if data_required():  # CI: the stage must run, not turn into a sentence
        pytest.fail(f"verify --sim cannot run in CI: {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory, default_build):
    """model -> (verify.json, the build folder, seconds, the command's output): `bnnflow verify MODEL --images N
    --sim N` on a copy of the session's default build (conftest's default_build: `bnnflow build MODEL
    --stop-after specialize_layers`), which verify continues to the generated sources, once per model."""
    runs = {}

    def get(model: str):
        if model not in runs:
            tools_or_skip()
            out = copy_build(default_build(model), tmp_path_factory.mktemp("simdefaults") / f"{model}-default")
            n = IMAGES[model]
            t0 = time.time()
            r = subprocess.run([sys.executable, "-m", "bnnflow", "verify", model, "--build", str(out),
                                "--images", str(VERIFY_IMAGES), "--sim", str(n), "--data", str(shared_npz("test").parent)],
                               capture_output=True, text=True, env={**os.environ, "COLUMNS": "160"})
            seconds = time.time() - t0
            (out.parent / f"{model}.log").write_text(r.stdout + r.stderr)  # kept for the timings
            assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
            runs[model] = (json.loads((out / "verify.json").read_text()), out, seconds, r.stdout)
        return runs[model]

    return get


@pytest.mark.parametrize("model", list(IMAGES))
def test_verify_sim_default_model(sim_run, model):
    from qonnx.core.modelwrapper import ModelWrapper

    from bnnflow.build_flows.verify import CPPSIM_STAGE, FOLDED_STEP

    result, out, seconds, stdout = sim_run(model)
    n = IMAGES[model]
    print(f"{model}: verify --sim {n} took {seconds:.0f} s")
    assert result["all_identical"], result["stages"]
    # the README's verify table: identical integer logits and top-1 on every image of every stage
    print(f"| {model} | {VERIFY_IMAGES} | " + " | ".join(f"{s['stage']}: {s['identical_integer_logits']}/{s['images']}"
                                                     for s in result["stages"]) + " |")
    for s in result["stages"]:
        m = n if s["stage"] == CPPSIM_STAGE else VERIFY_IMAGES
        assert s["images"] == m and s["identical_integer_logits"] == m and s["same_top1"] == m, s
    info = result["cppsim"]
    assert "skipped" not in info, info.get("skipped")
    child = ModelWrapper(str(flow.intermediate_path(out, FOLDED_STEP)))
    hls = [nd.name for nd in child.graph.node if nd.op_type.endswith("_hls")]
    rtl = [nd.name for nd in child.graph.node if nd.op_type.endswith("_rtl")]
    assert hls and rtl and len(hls) + len(rtl) == len(child.graph.node)
    # every HLS node as its C++ binary (its output file written on every image), every RTL node in Verilator
    assert not info["hls_nodes_not_run"]
    assert {k: info["nodes"][k] for k in hls if info["nodes"][k] not in HLS_KINDS} == {}
    assert {k: info["nodes"][k] for k in rtl if info["nodes"][k] not in RTL_KINDS} == {}
    # every tensor equal to the functional model's; every RTL output equal in Verilator too
    assert info["all_tensors_identical"] and info["tensors_differing"] == [] and info["shim_warnings"] == []
    assert info["tensors_compared"] == sum(len(nd.output) for nd in child.graph.node)
    v = info["verilator"]
    assert v["all_identical"] and not v["failed"] and v["nodes_run"] == len(rtl)
    assert all(v["nodes"][k]["identical"] and v["nodes"][k]["cycles_per_image"] > 0 for k in rtl)
    # the stream model that sizes the FIFOs gives every RTL node Verilator's cycles (fifo_crosscheck's slack)
    check = info["cycle_check"]
    assert set(check["nodes"]) == set(rtl)
    assert check["all_agree"], {k: r for k, r in check["nodes"].items() if not r["agrees"]}
    # built with the weights commands take by default: the committed checkpoint where there is one
    from bnnflow.build_flows.identity import weights_id
    from bnnflow.models.checkpoint import committed_checkpoint

    weights = committed_checkpoint(model, "default")
    assert (flow.BuildState(out).data.get("identity") or {}).get("weights") == weights_id(weights, 0)
    assert (weights is not None) == (model in RECORDED_TOP1)
    if weights is not None:
        _check_committed_checkpoint(model, weights, result, out)


# model -> the README's test top-1 of its committed default checkpoint, until the next promotion
RECORDED_TOP1 = {"resnete": 0.8523, "cnv": 0.8244, "densenet": 0.8633}


def _check_committed_checkpoint(model: str, weights, result: dict, out) -> None:
    """The committed trained default fits the board, and on these 100 images it is in line with the test
    top-1 its training recorded (a damaged or swapped checkpoint would be near chance)."""
    from bnnflow.models.checkpoint import recorded_top1

    recorded = recorded_top1(weights)
    assert recorded == pytest.approx(RECORDED_TOP1[model], abs=5e-5)
    # 100 images: a standard error of ~4 points around the full-test-set figure; 3 of them allowed
    assert abs(result["brevitas_top1_accuracy"] - recorded) <= 0.12, (result["brevitas_top1_accuracy"], recorded)
    assert json.loads((out / "summary.json").read_text())["fits"]
