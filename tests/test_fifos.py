"""The stream model, the sizing of every FIFO (joins included) and its check.

The graph tests use the tiny variants (tests/conftest.py's tiny builds, once per session, shared with
test_folding / test_benchmark); the default models are checked in the slow test, on the session's
default builds (conftest's default_fold; `bnnflow benchmark`'s builds when they are there).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from bnnflow.errors import BnnflowError



def _copy(model):
    """A private copy of a fixture's model (the fold results are shared by the whole session)."""
    from qonnx.core.modelwrapper import ModelWrapper

    return ModelWrapper(copy.deepcopy(model.model))


@pytest.fixture(scope="module")
def folded(tiny_fold):
    """model -> fold result of its tiny variant (tests/conftest.py, once per session)."""
    return tiny_fold


# ------------------------------------------------------------------ the stream model on its own

def _toy(skip_depth: int | None, window: int = 40, tokens: int = 200):
    """fork -> (delay line that buffers `window` tokens before its first output) + skip -> add."""
    from bnnflow.build_flows import fifos

    edges = [fifos.Edge(0, "in", None, 0, "fork", 0, tokens, 8),
             fifos.Edge(1, "long", "fork", 0, "delay", 0, tokens, 8),
             fifos.Edge(2, "skip", "fork", 1, "add", 1, tokens, 8),
             fifos.Edge(3, "late", "delay", 0, "add", 0, tokens, 8),
             fifos.Edge(4, "out", "add", 0, None, 0, tokens, 8)]
    ones = np.ones(tokens, bool)
    fork = fifos.Proc("fork", "DuplicateStreams_hls", [0], [1, 2], tokens, [ones], [ones, ones])
    # reads `window` tokens, then one in / one out, then drains: a sliding window in miniature
    need = np.minimum(np.arange(tokens) + window, tokens - 1)
    oldest = np.append(np.arange(tokens), tokens)
    delay = fifos.Proc("delay", "ConvolutionInputGenerator_rtl", [1], [3],
                       swg={"need": need, "oldest": oldest, "buffer": window + 1, "in": tokens, "out": tokens})
    add = fifos.Proc("add", "ElementwiseAdd_hls", [3, 2], [4], tokens, [ones, ones], [ones])
    g = fifos.StreamGraph([fork, delay, add], edges, 4, {"fork": tokens, "delay": tokens, "add": tokens})
    return g, {2: skip_depth}


def test_toy_join_deadlocks_below_the_window_and_runs_above():
    from bnnflow.build_flows import fifos

    g, depths = _toy(skip_depth=8)
    small = fifos.simulate(g, depths)
    assert small.deadlock and 2 in small.full_edges  # the skip FIFO is full, the delay line starves
    g, depths = _toy(skip_depth=None)
    free = fifos.simulate(g, depths)
    assert not free.deadlock
    peak = int(free.max_occupancy[2])
    assert 40 <= peak <= 43  # the window the delay line buffers, plus a cycle or two
    sized = fifos.simulate(g, {2: peak + 1})
    assert not sized.deadlock and sized.interval == free.interval and sized.frame_done == free.frame_done


def test_toy_sides_and_sizing():
    from bnnflow.build_flows import fifos

    g, _ = _toy(skip_depth=None)
    sides = fifos.join_sides(g)
    assert sides == {3: False, 2: True}  # the add waits on the delayed input, not on the skip
    ref, need = fifos._stall_free_depths(g, 2)
    assert need[3] == fifos.DEFAULT_DEPTH and need[2] > int(ref.max_occupancy[2])


def _compare_with_reference(g, depths, frames: int = 2):
    from fifo_reference import reference_simulate

    from bnnflow.build_flows import fifos

    ours, ref = fifos.simulate(g, depths, frames), reference_simulate(g, depths, frames)
    assert ours.deadlock == ref.deadlock and ours.frame_done == ref.frame_done
    if ours.deadlock:
        assert ours.cycles == ref.cycles  # stuck in the same cycle
    else:
        assert ours.max_occupancy.tolist() == ref.max_occupancy  # every FIFO's peak, element for element
    return ours


def test_toy_matches_the_reference_simulator():
    for depth in (None, 8, 41, 44):
        g, depths = _toy(skip_depth=depth)
        _compare_with_reference(g, depths)


# ------------------------------------------------------------------ tiny FINN graphs


@pytest.mark.parametrize("model", ["resnete", pytest.param("densenet", marks=pytest.mark.slow)])
def test_stream_model_matches_the_reference_simulator(model, folded):
    """fifos.simulate against tests/fifo_reference.py (a plain cycle-by-cycle simulation of the same
    stream graph, written independently): the folded graph with every FIFO at its planned depth
    gives the same frames and peaks, at the interval the sizing promised; FINN's depth 2 everywhere
    deadlocks in the same cycle. Both share the stream graph (node programs from FINN's cycle
    counts), which RTL simulation will have to check once Vivado is available (issue 8)."""
    from bnnflow.build_flows import fifos

    res = folded(model)
    plan = res.evaluation.fifo_plan
    g = fifos.stream_graph(res.model)
    on_graph = fifos.depths_on_graph(res.model, g)
    built = {e: on_graph[e] for e in fifos.inner_edges(g)}
    assert not _compare_with_reference(g, built).deadlock  # two frames: the reference is plain Python
    planned = fifos.simulate(g, built, fifos.REPORT_FRAMES)
    assert not planned.deadlock and planned.interval == plan.interval == plan.target_interval
    shorts = [f for f in plan.fifos if f.short]
    assert shorts
    for f in shorts:  # at least the model's least depth (plus slack for the hardware's pipeline latency); with
        # every FIFO sized, a short FIFO may fill up without costing the interval (DenseNet's concats do)
        assert f.depth >= f.minimum >= fifos.DEFAULT_DEPTH and f.depth >= f.occupancy >= 1
    assert _compare_with_reference(g, {e: 2 for e in g.join_edges()}).deadlock


@pytest.mark.parametrize("model", ["resnete", "densenet"])
def test_join_fifos_sized_and_self_consistent(model, folded):
    """Self-consistency: the check re-runs the same simulator that chose the depths (the independent
    reference is test_stream_model_matches_the_reference_simulator below)."""
    from bnnflow.build_flows import fifos

    res = folded(model)
    plan = res.evaluation.fifo_plan
    joins = {f.join for f in plan.fifos}
    op = "ElementwiseAdd" if model == "resnete" else "StreamingConcat"
    assert joins and all(op in j for j in joins)
    for join in joins:
        mine = [f for f in plan.fifos if f.join == join]
        assert sum(f.short for f in mine) == 1, mine  # one short branch per join, and it got a real FIFO
        short = next(f for f in mine if f.short)
        # the model's least depth, plus the slack for the hardware's pipeline latency (which the fork may fill)
        assert short.depth > short.minimum >= 2 and short.depth >= short.occupancy >= 1
        assert short.fork and short.fork.startswith("DuplicateStreams")
    check = fifos.check_join_fifos(res.model)  # against the joins sized alone (depth 2 elsewhere)
    assert check.ok and not check.deadlock and check.interval <= check.reference_interval
    check = fifos.check_join_fifos(res.model, reference=plan)  # against the unbounded run
    assert check.ok and check.interval == check.reference_interval == plan.target_interval
    # the FIFO memory is in the budget
    assert res.evaluation.extra["LUT"] >= plan.join_lut > 0
    assert res.evaluation.total["LUT"] <= res.budget["LUT"]


@pytest.mark.parametrize("model", ["resnete", "densenet"])
def test_undersized_join_fifo_fails_with_a_clear_message(model, folded):
    from bnnflow.build_flows import fifos

    res = folded(model)
    plan = res.evaluation.fifo_plan
    short = next(f for f in plan.fifos if f.short)
    depths = plan.depths()
    depths[short.join] = [2] * len(depths[short.join])
    with pytest.raises(BnnflowError) as err:
        fifos.check_join_fifos(res.model, depths, reference=plan)
    msg = str(err.value)
    assert "deadlocks" in msg and short.join in msg and f"input {short.port}" in msg
    assert f"needs {short.depth}" in msg and "has depth 2" in msg
    # not raising: the result says so too
    assert not fifos.check_join_fifos(res.model, depths, raise_error=False).ok  # re-derives the reference


def test_cnv_has_no_joins(folded):
    from bnnflow.build_flows import fifos

    res = folded("cnv")
    plan = res.evaluation.fifo_plan
    assert plan.fifos == [] and plan.n_streams > 10 and plan.default_fifo_lut > 0
    assert fifos.check_join_fifos(res.model).ok


def test_finn_inserts_the_configured_depths(folded, tiny_specialised):
    """FINN 1.6.1 reads the join depths from the folding config (inFIFODepths -> InsertFIFO)."""
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.insert_fifo import InsertFIFO
    from finn.transformation.general import ApplyConfig
    from qonnx.custom_op.registry import getCustomOp

    res = folded("resnete")
    m, _ = tiny_specialised("resnete")
    m = m.transform(ApplyConfig(res.config))
    m = m.transform(InsertDWC()).transform(InsertFIFO(create_shallow_fifos=True))
    short = [f for f in res.evaluation.fifo_plan.fifos if f.short]
    for f in short:
        join = next(n for n in m.graph.node if n.name == f.join)
        fifo = m.find_producer(join.input[f.port])
        assert fifo.op_type.startswith("StreamingFIFO")
        assert getCustomOp(fifo).get_nodeattr("depth") == f.depth
    # every FIFO FINN inserts has the depth the model chose (2 into a width converter, at the ends)
    planned = {(n, i): d for n, ds in res.evaluation.fifo_plan.depths().items() for i, d in enumerate(ds)}
    fifo_nodes = [n for n in m.graph.node if n.op_type.startswith("StreamingFIFO")]
    assert len(fifo_nodes) > 2 * len(short)
    for fifo in fifo_nodes:
        consumer = m.find_consumer(fifo.output[0])
        port = list(consumer.input).index(fifo.output[0]) if consumer is not None else 0
        want = planned.get((consumer.name, port), 2) if consumer is not None else 2
        assert getCustomOp(fifo).get_nodeattr("depth") == want, fifo.name


# ------------------------------------------------------------------ every FIFO sized


def _sized_graph(res):
    """(stream graph, every inner stream's depth as FINN will build it, the model's least depths)."""
    from bnnflow.build_flows import fifos

    # a copy: the fixture's result is shared; a join-free fold leaves the depths to its config only
    model = fifos.apply_fifo_depths(_copy(res.model), res.evaluation.fifo_plan)
    g = fifos.stream_graph(model)
    on_graph = fifos.depths_on_graph(model, g)
    built = {e: on_graph[e] for e in fifos.inner_edges(g)}
    least = dict(built)
    for f in res.evaluation.fifo_plan.fifos:  # the joins' short branches carry the pipeline slack on top
        e = next(e for e in g.join_edges() if (g.edges[e].dst, g.edges[e].dst_port) == (f.join, f.port))
        least[e] = f.minimum
    return g, built, least


def test_every_fifo_sized_runs_at_the_unbounded_interval(folded):
    """cnv/tiny: with every FIFO at its planned depth the graph runs exactly as with every FIFO
    unbounded (the streams into width converters stay at FINN's 2, which the config cannot change),
    in both simulators; and FINN's depth 2 everywhere is slower."""
    from fifo_reference import reference_simulate

    from bnnflow.build_flows import fifos

    res = folded("cnv")
    plan = res.evaluation.fifo_plan
    assert plan.every_fifo and plan.minimal and any(f.depth > 2 for f in plan.streams)
    g, built, _ = _sized_graph(res)
    free = {**{e: None for e in built}, **{e: 2 for e in fifos.fixed_edges(g)}}
    frames = fifos.REPORT_FRAMES
    sized, unbounded = _compare_with_reference(g, built, frames), reference_simulate(g, free, frames)
    assert not sized.deadlock and sized.interval == unbounded.interval == plan.interval == plan.target_interval
    assert plan.ideal_interval <= sized.interval <= plan.ideal_interval * 1.05  # the slowest layer, nearly
    assert fifos.simulate(g, {e: 2 for e in built}, frames).interval > sized.interval


@pytest.mark.parametrize("model", ["cnv", "resnete"])
def test_each_fifo_is_minimal(model, folded):
    """One less on any FIFO the model sized above 2 deadlocks the graph or lowers its throughput."""
    from bnnflow.build_flows import fifos

    res = folded(model)
    plan = res.evaluation.fifo_plan
    g, _, least = _sized_graph(res)
    frames = fifos.SIZING_FRAMES

    def keeps(depths) -> bool:
        r = fifos.simulate(g, depths, frames)
        return not r.deadlock and r.interval <= plan.target_interval

    assert plan.minimal and keeps(least)
    sized = [e for e, d in least.items() if d > 2]
    assert len(sized) >= 5
    for e in sized:
        assert not keeps({**least, e: least[e] - 1}), g.edges[e]


def test_compiled_loop_matches_numpy(folded, monkeypatch):
    """fifo_kernel (C) against fifo_sim's numpy loop: identical frames, peaks, deadlock cycle, and
    the waits and early stop that pick each join's short branch."""
    from bnnflow.build_flows import fifo_kernel, fifos

    if fifo_kernel.kernel() is None:
        pytest.skip("no C compiler: the numpy loop is the only one")
    g, built, _ = _sized_graph(folded("resnete"))
    joins = g.join_edges()
    probe = {e: max(1, g.edges[e].tokens // fifos.SIDES_PROBE_FRACTION) for e in joins}
    runs = [(depths, {}) for depths in (built, {e: 2 for e in built}, {e: None for e in built})]
    runs += [({e: None for e in joins}, dict(frames=1, track_waits=True, stop_after_reads=probe)),
             ({e: None for e in joins}, dict(frames=1, track_waits=True)), (built, dict(track_waits=True))]
    for depths, kw in runs:
        fast = fifos.simulate(g, depths, **kw)
        monkeypatch.setenv(fifo_kernel.DISABLE_ENV, "1")
        slow = fifos.simulate(g, depths, **kw)
        monkeypatch.delenv(fifo_kernel.DISABLE_ENV)
        assert (fast.deadlock, fast.cycles, fast.frame_done) == (slow.deadlock, slow.cycles, slow.frame_done)
        assert fast.max_occupancy.tolist() == slow.max_occupancy.tolist()
        assert sorted(fast.full_edges) == sorted(slow.full_edges)
        assert (fast.waits is None) == (slow.waits is None)
        if fast.waits is not None:
            assert fast.waits.tolist() == slow.waits.tolist()
        if kw.get("track_waits"):
            assert fast.waits.any(), kw  # the probe saw joins wait
    assert len(joins) >= 4 and sum(fifos.join_sides(g).values()) == len(joins) // 2


def test_modelled_cycles_hook(folded):
    """Per node, the cycles the model gives it alone (the hook for RTL-simulation cross-checks):
    FINN's estimate for the loop nodes, at most that for the window generators."""
    from bnnflow.build_flows import fifos

    res = folded("cnv")
    g = fifos.stream_graph(res.model)
    for p in g.procs:
        if p.virtual:
            continue
        cycles = fifos.modelled_cycles(g, p.name)
        if p.swg is None:
            assert cycles == g.exp_cycles[p.name], p.name
        else:
            assert 0 < cycles <= g.exp_cycles[p.name], p.name


def test_summary_reports_the_simulated_fps(tiny_cnv):
    """summary.json and the printed summary give the stream model's FPS and latency beside FINN's."""
    from rich.console import Console

    from bnnflow.build_flows.estimates import print_summary

    s = tiny_cnv["summary"]
    assert not s["sim_deadlock"] and s["sim_interval_cycles"] >= s["max_cycles"]
    assert 0 < s["sim_fps"] <= s["fps"] * (1 + 1e-9) and s["sim_latency_ms"] > 0
    assert s["sim_fps"] == pytest.approx(s["clock_mhz"] * 1e6 / s["sim_interval_cycles"])
    console = Console(record=True, width=200)
    print_summary(s, console, per_layer=False)
    text = console.export_text()
    assert f"Stream model with this build's FIFO depths: {s['sim_fps']:,.0f} FPS" in text


# ------------------------------------------------------------------ the default models

@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnete", "densenet", "cnv"])
def test_join_check_self_consistent_on_default_models(model, default_fold):
    """Self-consistency on the default models: the chosen depths pass the simulator that chose them."""
    from bnnflow.build_flows import fifos

    _, res = default_fold(model)
    sized = fifos.apply_fifo_depths(_copy(res.model), res.evaluation.fifo_plan)  # a join-free fold: config only
    check = fifos.check_join_fifos(sized, reference=res.evaluation.fifo_plan)
    assert check.ok, check.message
    if model != "cnv":
        assert any(f.short for f in res.evaluation.fifo_plan.fifos)
