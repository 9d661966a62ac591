"""Deadlock-free joins: the stream model, the join FIFO sizing and its check.

The graph tests use the tiny variants (tests/conftest.py's tiny builds, once per session, shared with
test_folding / test_benchmark); the default models are checked in the slow test, which reuses
`bnnflow benchmark`'s builds when they are there (conftest's default_fold).
"""

from __future__ import annotations

import numpy as np
import pytest

from bnnflow.errors import BnnflowError

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


def _compare_with_reference(g, depths):
    from fifo_reference import reference_simulate

    from bnnflow.build_flows import fifos

    ours, ref = fifos.simulate(g, depths), reference_simulate(g, depths)
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
    stream graph, written independently): the planned depths, unbounded short branches (the run the
    depths are read from) and FINN's depth 2 everywhere (a deadlock) give the same frames, peaks and
    deadlock cycle. Both share the stream graph (node programs from FINN's cycle counts), which RTL
    simulation will have to check once Vivado is available (issue 8)."""
    from bnnflow.build_flows import fifos

    res = folded(model)
    g = fifos.stream_graph(res.model)
    joins = g.join_edges()
    on_graph = fifos.depths_on_graph(res.model, g)
    planned = _compare_with_reference(g, {e: on_graph[e] for e in joins})
    assert not planned.deadlock and planned.interval == res.evaluation.fifo_plan.interval
    free = _compare_with_reference(g, {e: (None if s else 2) for e, s in fifos.join_sides(g).items()})
    shorts = [f for f in res.evaluation.fifo_plan.fifos if f.short]
    assert shorts
    for f in shorts:  # each short FIFO's depth covers the peak the reference sees there
        e = next(e for e in joins if (g.edges[e].dst, g.edges[e].dst_port) == (f.join, f.port))
        assert f.depth > free.max_occupancy[e] >= 1
    assert _compare_with_reference(g, {e: 2 for e in joins}).deadlock

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
        assert short.depth > short.occupancy >= 1 and short.fork and short.fork.startswith("DuplicateStreams")
    check = fifos.check_join_fifos(res.model)
    assert check.ok and not check.deadlock and check.interval == check.reference_interval
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


# ------------------------------------------------------------------ the default models

@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnete", "densenet", "cnv"])
def test_join_check_self_consistent_on_default_models(model, default_fold):
    """Self-consistency on the default models: the chosen depths pass the simulator that chose them."""
    from bnnflow.build_flows import fifos

    _, res = default_fold(model)
    check = fifos.check_join_fifos(res.model, reference=res.evaluation.fifo_plan)
    assert check.ok, check.message
    if model != "cnv":
        assert any(f.short for f in res.evaluation.fifo_plan.fifos)
