"""FINN's RTL layers in Verilator, one node at a time (build_flows/verilator_sim.py, `verify --sim N`).

Each Verilator bench is checked against FINN's own Python execution of the node (`execute_node`, what
cppsim mode runs) and bnnflow's functional model: RTL nodes of the tiny CNV build on real CIFAR-10
activations; a hand-made MVAU_rtl with ports wider than 64 bits and two input streams (data + weights),
built from the patched add_multi.sv; a StreamingFIFO_rtl built from the patched fifo.sv. Also: the
patches themselves (Verilator rejects the originals), the cache, and "no Verilator" as one sentence.
Each Verilator build takes ~5-15 s on 2 busy cores.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from bnnflow.build_flows import rtllib_patches, sim_ccache, verilator_build, verilator_sim
from bnnflow.images import nchw_float

from conftest import one_sentence


@pytest.fixture(scope="module")
def vroot(tmp_path_factory) -> Path:
    """One BUILD-like folder for the module's benches: Verilator's runtime objects are compiled once."""
    return tmp_path_factory.mktemp("verilator")


def verilator_or_skip() -> Path:
    why = verilator_build.unavailable()
    if why is not None:
        pytest.skip(why)
    return verilator_build.verilator_exe()


def finn_python(model, node, tensors: dict, n: int) -> dict[str, np.ndarray]:
    """FINN's Python model of one node (its execute_node in cppsim mode), one image at a time."""
    from qonnx.custom_op.registry import getCustomOp

    inst = getCustomOp(node)
    inst.set_nodeattr("exec_mode", "cppsim")
    outs = {t: [] for t in node.output}
    for i in range(n):
        ctx = {t: (model.get_initializer(t) if model.get_initializer(t) is not None else tensors[t][i:i + 1])
               for t in node.input}
        ctx = {t: np.asarray(v, dtype=np.float32) for t, v in ctx.items()}
        ctx.update({t: np.zeros(model.get_tensor_shape(t), dtype=np.float32) for t in node.output})
        inst.execute_node(ctx, model.graph)
        for t in node.output:
            outs[t].append(ctx[t])
    return {t: np.concatenate(v) for t, v in outs.items()}


def check_against_finn(model, out: Path, names: set[str], tensors: dict, n: int) -> list:
    """Build and run the named nodes in Verilator; every output equals FINN's Python model's."""
    m, builds = verilator_build.build_all(out, model, only=names)
    assert {b.name for b in builds} == names
    for nb in builds:
        assert nb.exe is not None, (nb.name, nb.error)
        run = verilator_sim.run_node(m, nb, tensors, n)
        want = finn_python(copy.deepcopy(model), model.get_node_from_name(nb.name), tensors, n)
        for t, v in run.outputs.items():
            assert np.array_equal(v, want[t].reshape(v.shape)), (nb.name, t)
        assert run.cycles_first > 0 and run.cycles_per_image > 0
    return builds


# ------------------------------------------------------------------ the finn-rtllib patches


def lint(exe: Path, files: list[Path], top: str, params: list[str], tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), "--lint-only", "-Wno-fatal", "-Wno-lint", "-Wno-style", "-DFINN_SIMULATION",
                           "--top-module", top, *params, *map(str, files)], capture_output=True, text=True,
                          cwd=tmp, env=verilator_build._env(exe))


def test_patches_make_verilator_accept_add_multi_and_fifo(tmp_path):
    """The upstream files fail Verilator's elaboration, the patched copies pass; both patches are small."""
    exe = verilator_or_skip()
    from finn.util.settings import get_settings

    from bnnflow import compat

    compat.finn_ready()
    lib = Path(get_settings().finn_rtllib)
    cases = [([lib / "mvu" / "mvu_pkg.sv", lib / "mvu" / "add_multi.sv"], "add_multi",
              ["-GN=5", "-GDEPTH=2", "-GARG_WIDTH=4"]),
             ([lib / "fifo" / "hdl" / "fifo.sv"], "fifo", ["-GDEPTH=1024", "-GDATA_WIDTH=8"])]
    for files, top, params in cases:
        orig = lint(exe, files, top, params, tmp_path)
        patched, names = rtllib_patches.patched_sources(files, tmp_path / "patched")
        assert names == [files[-1].name] and patched[-1].parent == tmp_path / "patched"
        new = lint(exe, patched, top, params, tmp_path)
        assert orig.returncode != 0 and "%Error" in orig.stderr, files[-1].name
        assert new.returncode == 0, new.stderr[-2000:]
        changed = set(files[-1].read_text().splitlines()) ^ set(patched[-1].read_text().splitlines())
        assert len(changed) < 80, files[-1].name  # a small textual patch (old + new lines), not a rewrite


def test_patches_refuse_unexpected_sources():
    with pytest.raises(rtllib_patches.PatchError):
        rtllib_patches.patch_add_multi("module add_multi; endmodule\n")
    with pytest.raises(rtllib_patches.PatchError):
        rtllib_patches.patch_fifo("module fifo; endmodule\n")


# ------------------------------------------------------------------ hand-made nodes: wide ports, patched files


def mvau_rtl_model(mw=18, mh=10, simd=9, pe=5, vectors=(1, 3, 3)):
    """One MVAU_rtl (internal_decoupled, UINT8 x INT4 -> INT16): a 72-bit input and an 80-bit output stream,
    plus the weight stream FINN's rtlsim feeds on in1."""
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper

    shape_in, shape_out = [*vectors, mw], [*vectors, mh]
    node = helper.make_node(
        "MVAU_rtl", ["x", "w"], ["y"], name="MVAU_rtl_0", domain="finn.custom_op.fpgadataflow.rtl",
        backend="fpgadataflow", MW=mw, MH=mh, SIMD=simd, PE=pe, inputDataType="UINT8", weightDataType="INT4",
        outputDataType="INT16", accDataType="INT16", noActivation=1, binaryXnorMode=0,
        numInputVectors=list(vectors), mem_mode="internal_decoupled", resType="dsp")
    graph = helper.make_graph([node], "mvau", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape_out)])
    model = ModelWrapper(helper.make_model(graph, producer_name="bnnflow-test"))
    rng = np.random.default_rng(0)
    model.set_initializer("w", rng.integers(-7, 8, size=(mw, mh)).astype(np.float32))
    for t, dt in (("x", "UINT8"), ("w", "INT4"), ("y", "INT16")):
        model.set_tensor_datatype(t, DataType[dt])
    return model


def test_mvau_rtl_wide_ports_and_weight_stream(vroot, cifar_test):
    """Ports wider than 64 bits (VlWide in the bench), two input streams, the patched add_multi.sv: identical
    to FINN's Python MVAU on CIFAR-10 pixels."""
    verilator_or_skip()
    model = mvau_rtl_model()
    x, _ = cifar_test
    n = 2
    tensors = {"x": x[:n].reshape(n, -1)[:, :3 * 3 * 18].reshape(n, 3, 3, 18).astype(np.float32)}  # pixel values
    from qonnx.custom_op.registry import getCustomOp

    inst = getCustomOp(model.graph.node[0])
    assert inst.get_instream_width(0) == 72 and inst.get_outstream_width(0) == 80
    builds = check_against_finn(model, vroot, {"MVAU_rtl_0"}, tensors, n)
    assert builds[0].kind == verilator_build.PATCHED and builds[0].patched == ["add_multi.sv"]
    assert verilator_build.stream_inputs(inst, model.graph.node[0]) == [0, 1]


def test_streaming_fifo_rtl_patched(vroot):
    """StreamingFIFO_rtl (not in verify's graphs, which have no FIFOs yet) from the patched fifo.sv: the data
    comes out unchanged, in order, as FINN's Python model of the FIFO says."""
    verilator_or_skip()
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.modelwrapper import ModelWrapper

    shape = [1, 4, 4, 8]
    node = helper.make_node("StreamingFIFO_rtl", ["x"], ["y"], name="StreamingFIFO_rtl_0",
                            domain="finn.custom_op.fpgadataflow.rtl", backend="fpgadataflow", depth=32,
                            folded_shape=[1, 4, 4, 2, 4], normal_shape=shape, dataType="INT3", impl_style="rtl")
    graph = helper.make_graph([node], "fifo", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = ModelWrapper(helper.make_model(graph, producer_name="bnnflow-test"))
    for t in ("x", "y"):
        model.set_tensor_datatype(t, DataType["INT3"])
    tensors = {"x": np.random.default_rng(1).integers(-4, 4, size=[3, *shape[1:]]).astype(np.float32)}
    builds = check_against_finn(model, vroot, {"StreamingFIFO_rtl_0"}, tensors, 3)
    assert builds[0].patched == ["fifo.sv"]


# ------------------------------------------------------------------ real nodes of a build, real activations


def cnv_rtl_nodes(tiny_cnv_build, cifar_test):
    """The tiny CNV's folded graph, a Thresholding_rtl and a sliding window of it, and every tensor of 2 real
    CIFAR-10 images through the functional model (graph input included)."""
    from bnnflow.build_flows.functional import execute_graph
    from bnnflow.build_flows.verify import folded_model_and_input

    x, _ = cifar_test
    child, xf = folded_model_and_input(tiny_cnv_build, nchw_float(x[:2]))
    names = {next(n.name for n in child.graph.node if n.op_type == op)
             for op in ("Thresholding_rtl", "ConvolutionInputGenerator_rtl")}
    tensors = execute_graph(child, xf, tensors=[t for n in child.graph.node for t in n.output])
    tensors[child.graph.input[0].name] = xf
    return child, names, tensors


def test_cnv_rtl_nodes_match_finn_and_cache(vroot, tiny_cnv_build, cifar_test, monkeypatch, tmp_path):
    """Two RTL nodes of the tiny CNV build (a Thresholding_rtl reading .dat files, a sliding window) on the
    real activations of 2 CIFAR-10 images: identical to FINN's Python model and the functional model; a
    second build_all reuses the binaries; another build folder takes the kept benches (same outputs), or
    without them compiles every object from the compiler cache."""
    verilator_or_skip()
    kept = tmp_path / "kept"
    monkeypatch.setattr(sim_ccache, "binary_cache_dir", lambda: kept)  # empty: the first build compiles
    child, names, tensors = cnv_rtl_nodes(tiny_cnv_build, cifar_test)
    builds = check_against_finn(child, vroot, names, tensors, 2)
    assert not any(b.reused for b in builds)
    assert len(list(kept.glob("*/Vdut"))) == len(names)
    assert any(p.suffix == ".dat" for b in builds for p in b.src.iterdir())  # the bench ran where they are
    m1, again = verilator_build.build_all(vroot, child, only=names)
    assert all(b.reused and not b.kept_elsewhere and b.exe == a.exe for a, b in zip(builds, again))
    m3, fetched = verilator_build.build_all(vroot.parent / f"{vroot.name}-kept", child, only=names)
    assert all(b.reused and b.kept_elsewhere and b.exe != a.exe for a, b in zip(builds, fetched))
    for a, b in zip(builds, fetched):
        r1, r3 = verilator_sim.run_node(m1, a, tensors, 2), verilator_sim.run_node(m3, b, tensors, 2)
        assert all(np.array_equal(r1.outputs[t], r3.outputs[t]) for t in r1.outputs)
    # without kept benches another build folder compiles the same C++ (Verilator's output names only relative
    # paths): every object from the compiler cache, same outputs
    monkeypatch.setattr(sim_ccache, "binary_cache_dir", lambda: None)
    if sim_ccache.exe() is not None:
        other = vroot.parent / f"{vroot.name}-elsewhere"
        m2, moved = verilator_build.build_all(other, child, only=names)
        assert not any(b.reused for b in moved) and all(b.exe is not None for b in moved)
        stats = sim_ccache.log_stats(other / verilator_build.CACHE_DIR / sim_ccache.STATS_LOG)
        assert stats["hits"] > 0 and stats["misses"] == 0, stats
        for a, b in zip(builds, moved):
            r1, r2 = verilator_sim.run_node(m1, a, tensors, 2), verilator_sim.run_node(m2, b, tensors, 2)
            assert all(np.array_equal(r1.outputs[t], r2.outputs[t]) for t in r1.outputs)
            assert (r1.cycles_first, r1.cycles_per_image) == (r2.cycles_first, r2.cycles_per_image)


def test_stream_model_cycles_match_verilator(vroot, tiny_cnv_build, cifar_test):
    """The stream model that sizes the FIFOs (fifo_sizing.node_alone) against Verilator, per RTL node of cnv/tiny
    on 2 real images: steady state within fifo_crosscheck.STEADY_SLACK cycles per image (the SWG idles one
    cycle between images), first image within FIRST_SLACK (pipeline fill). Reuses the benches compiled above."""
    verilator_or_skip()
    from bnnflow.build_flows import fifo_crosscheck

    child, names, tensors = cnv_rtl_nodes(tiny_cnv_build, cifar_test)
    m, builds = verilator_build.build_all(vroot, child, only=names)
    runs = {b.name: verilator_sim.run_node(m, b, tensors, 2) for b in builds}
    rows = {k: {"op_type": child.get_node_from_name(k).op_type, "cycles_first_image": r.cycles_first,
                "cycles_per_image": r.cycles_per_image} for k, r in runs.items()}
    check = fifo_crosscheck.cross_check(child, rows, 2)
    assert check["all_agree"], check["nodes"]
    assert set(check["types"]) == {"Thresholding_rtl", "ConvolutionInputGenerator_rtl"}
    swg = next(k for k in names if k.startswith("Conv"))
    # the SWG reads no input of the next image before its last window left: letting frames overlap (the
    # model before this check) puts the SWG's steady state below Verilator's by more than the slack
    from bnnflow.build_flows import fifo_graph
    from bnnflow.build_flows.fifo_sizing import node_alone

    g = fifo_graph.stream_graph(child)
    p = g.proc(swg)
    overlapping = fifo_graph._swg_model(getcustom(child, swg), p.swg["in"], p.swg["out"], overlap=True)
    p.swg = overlapping
    assert rows[swg]["cycles_per_image"] - node_alone(g, swg, 2).interval > fifo_crosscheck.STEADY_SLACK


def getcustom(model, name):
    from qonnx.custom_op.registry import getCustomOp

    return getCustomOp(model.get_node_from_name(name))


@pytest.mark.parametrize("name, k, width", [("BINARY", 1, 8), ("BINARY", 72, 72), ("INT3", 24, 72), ("UINT8", 3, 24),
                                            ("INT14", 1, 16), ("INT24", 7, 168), ("UINT1", 3, 4), ("INT32", 2, 64),
                                            ("BIPOLAR", 5, 8)])
def test_numpy_packing_equals_finns(name, k, width):
    """rtl_packing (the benches' words) gives FINN's npy_to_rtlsim_input / rtlsim_output_to_npy words and arrays,
    ports wider than 64 bits and signed types included (BIPOLAR: FINN's own code)."""
    from finn.util.data_packing import npy_to_rtlsim_input, rtlsim_output_to_npy
    from qonnx.core.datatype import DataType

    from bnnflow.build_flows import rtl_packing

    dt = DataType[name]
    x = np.random.default_rng(k).integers(0 if name == "BIPOLAR" else dt.min(), dt.max() + 1, size=(3, 4, k))
    x = (2 * x - 1 if name == "BIPOLAR" else x).astype(np.float32)
    words = npy_to_rtlsim_input(x, dt, width)
    assert rtl_packing.pack(x, dt, width) == words
    back = rtl_packing.unpack(words, dt, x.shape, width)
    assert np.array_equal(back, np.asarray(rtlsim_output_to_npy(words, None, dt, x.shape, width, dt.bitwidth())))
    assert np.array_equal(back, x)


def test_cache_key_covers_the_harness(tmp_path, monkeypatch):
    """A changed bench (hw/verilator/harness.cpp) means a rebuild: the key hashes it."""
    verilator_or_skip()
    model = mvau_rtl_model(mw=4, mh=2, simd=2, pe=1, vectors=(1, 1, 1))
    exe = verilator_build.verilator_exe()
    version = verilator_build.verilator_version(exe)
    from bnnflow import compat

    compat.finn_ready()
    job = verilator_build.prepare_node(copy.deepcopy(model), model.graph.node[0], tmp_path, "xc7z020clg400-1", 10.0,
                                     version)
    assert isinstance(job, verilator_build._Job)
    other = tmp_path / "harness.cpp"
    other.write_text(verilator_build.HARNESS.read_text() + "\n// changed\n")
    monkeypatch.setattr(verilator_build, "HARNESS", other)
    job2 = verilator_build.prepare_node(copy.deepcopy(model), model.graph.node[0], tmp_path, "xc7z020clg400-1", 10.0,
                                      version)
    assert job2.key != job.key


# ------------------------------------------------------------------ no Verilator: one sentence


def test_missing_verilator_is_one_sentence(monkeypatch):
    from bnnflow.build_flows.verify import print_cppsim

    monkeypatch.setattr(verilator_build, "verilator_exe", lambda: None)
    why = verilator_build.unavailable()
    assert why is not None and "Verilator" in why and "Python models" in why
    one_sentence(Exception(why))
    assert verilator_sim.simulate(Path("/nonexistent"), None, {}, 1) == {"skipped": why}
    info = {"images": 1, "node_types": {"Thresholding_rtl": {"nodes": 2, "ran_as": verilator_build.PYTHON}},
            "sources": "s", "stand_ins": ["x"], "verilator": {"skipped": why}, "shim_warnings": [],
            "all_tensors_identical": True, "tensors_compared": 2}
    console = Console(record=True, width=1000)
    print_cppsim(info, console)
    text = console.export_text()
    assert [line for line in text.splitlines() if "Verilator" in line] == [why]
    monkeypatch.setattr(verilator_build.shutil, "which", lambda name: None)
    monkeypatch.setattr(verilator_build, "verilator_exe", lambda: Path("/x/verilator"))
    one_sentence(Exception(verilator_build.unavailable()))


def test_kept_benches_go_least_recently_used_first(tmp_path, monkeypatch):
    """sim_ccache.keep_binary: atomic copies under their keys; beyond the byte limit the bench used longest ago
    goes; a cache that cannot be written is no error."""
    import os

    kept = tmp_path / "kept"
    monkeypatch.setattr(sim_ccache, "binary_cache_dir", lambda: kept)
    monkeypatch.setattr(sim_ccache, "BINARY_CACHE_BYTES", 2500)
    bench = tmp_path / "Vdut"
    for i, key in enumerate("abc"):
        bench.write_bytes(bytes([i]) * 1000)
        sim_ccache.keep_binary(key, bench)
        os.utime(kept / key / "Vdut", (1000 + i, 1000 + i))
    assert not (kept / "a").exists() and sim_ccache.cached_binary("b").read_bytes() == bytes([1]) * 1000
    bench.write_bytes(b"d" * 1000)
    sim_ccache.keep_binary("d", bench)  # "b" was just used: "c" goes
    assert sorted(p.parent.name for p in kept.glob("*/Vdut")) == ["b", "d"]
    assert not list(kept.glob("*/.Vdut.*")) and sim_ccache.cached_binary("c") is None
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(sim_ccache, "binary_cache_dir", lambda: tmp_path / "file" / "kept")
    sim_ccache.keep_binary("e", bench)
    assert sim_ccache.cached_binary("e") is None
